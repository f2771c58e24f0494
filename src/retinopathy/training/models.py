"""The model: an architecture by name (torchvision, else timm), its pretrained weights (with a one-line answer when
they cannot be fetched), and the fastai learner around it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..device import cpu_has_native_bf16, cpu_prefers_channels_last, cuda_available
from ..errors import UserError
from ..experiment import Experiment
from ..heads import get_head
from ..metrics import quadratic_kappa
from ..paths import FoldFiles
from .losses import class_weights
from .pooling import pool_layer

#: an arch name starting with this is timm's even where torchvision has the same name (resnet18, efficientnet_b3)
TIMM_PREFIX = "timm:"


def resolve_arch(name: str):
    """A torchvision model function by name, else the name itself for fastai to build through timm; ``timm:<name>``
    is timm's model (and its weights) where both libraries have the name."""
    import torchvision.models as tvm
    forced = name.startswith(TIMM_PREFIX)
    name = name.removeprefix(TIMM_PREFIX)
    fn = None if forced else getattr(tvm, name, None)
    if callable(fn) and name.islower():
        return fn
    try:
        import timm
    except ImportError:
        raise UserError(f"arch '{name}' is not a torchvision model, and timm (for other names) is not installed: "
                        "pip install timm, or use e.g. resnet18, resnet34, resnet50, efficientnet_b0") from None
    if not (timm.list_models(name) or timm.list_models(name, pretrained=True)):  # the latter: "resnet18.a1_in1k"
        raise UserError(f"unknown arch '{name}': not a {'' if forced else 'torchvision or '}timm model name")
    return name


def torchvision_weights_file(name: str) -> Path | None:
    """Where torchvision keeps (or would download) the default ImageNet weights of ``name``."""
    import torchvision.models as tvm
    try:
        url = tvm.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        return None
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _looks_like_download_failure(error: BaseException) -> bool:
    import urllib.error
    names = {type(e).__name__ for e in (error, error.__cause__, error.__context__) if e is not None}
    return isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError, OSError)) or bool(
        names & {"LocalEntryNotFoundError", "ConnectError", "ConnectionError", "HfHubHTTPError", "MaxRetryError"})


def _no_weights_message(name: str, arch, error: BaseException) -> str:
    reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
    if callable(arch):  # torchvision
        target = torchvision_weights_file(name)
        where = f"put the weights file at {target}" if target else "put the weights in torch's hub cache"
        return (f"pretrained weights for {name} are not cached and could not be downloaded ({reason}): {where} "
                f"(copy it from a machine with internet; $TORCH_HOME moves the cache), or set pretrained=false")
    return (f"pretrained weights for timm model {name} are not cached and could not be downloaded ({reason}): "
            f"fill the Hugging Face cache (~/.cache/huggingface/hub, or $HF_HOME) on a machine with internet, "
            f"or set pretrained=false")


def stack_problem(fastai: str, fastcore: str) -> str | None:
    """Why this fastai cannot train with this fastcore (None where they work together): fastcore 2 removed
    ``L.starmap``, which fastai before 2.8.8 calls deep inside its data pipeline (fastai#4154); pip allows the pair
    because fastai 2.8.7 and older declare no upper bound."""
    from packaging.version import Version

    if Version(fastai) < Version("2.8.8") and Version(fastcore) >= Version("2"):
        return (f"fastai {fastai} cannot run with fastcore {fastcore} (fastcore 2 removed what it calls): "
                "pip install 'fastai>=2.8.8', or 'fastcore<2' where the runtime pins it (Kaggle)")
    return None


def check_training_stack() -> None:
    """Refuse, in one line, a fastai / fastcore pair that fails deep inside fastai once training starts."""
    from importlib.metadata import version

    problem = stack_problem(version("fastai"), version("fastcore"))
    if problem:
        raise UserError(problem)


def plain_grades_of_raw(raw, targets, head: str):
    """The plain grades of a batch of raw network outputs (a torch tensor), and the targets as grades."""
    h = get_head(head)
    outputs = h.activate(torch.as_tensor(raw).float()).detach().cpu().numpy()
    return h.plain_grades(outputs), np.asarray(torch.as_tensor(targets).cpu()).reshape(-1).round().astype(int)


def output_kappa(raw, targets, head: str = "classification") -> float:
    """QWK of raw network outputs graded by the head's plain rule: the validation metric while training."""
    return quadratic_kappa(*plain_grades_of_raw(raw, targets, head))


def output_accuracy(raw, targets, head: str = "classification") -> float:
    """Share of images whose plainly-graded output equals the target grade."""
    grades, truth = plain_grades_of_raw(raw, targets, head)
    return float((grades == truth).mean())


def output_error_rate(raw, targets, head: str = "classification") -> float:
    """1 - :func:`output_accuracy`."""
    return 1.0 - output_accuracy(raw, targets, head)


def build_learner(dls, experiment: Experiment, path: Path):
    """fastai's ``vision_learner`` for the config: architecture by name (pretrained or not), the head's outputs and
    loss (class weighted when ``balance=loss``), the pooling by name, QWK / accuracy / error-rate metrics, mixed
    precision where the device has it."""
    from functools import partial

    from fastai.callback.channelslast import ChannelsLast
    from fastai.vision.all import AccumMetric, vision_learner

    from .callbacks import CPUBFloat16

    config = experiment.config
    head = experiment.head
    metrics = [AccumMetric(partial(fn, head=head.name), flatten=False, to_np=False, name=name)
               for fn, name in ((output_kappa, "qwk"), (output_accuracy, "accuracy"),
                                (output_error_rate, "error_rate"))]
    train_grades = np.asarray([int(round(float(y))) for y in dls.train_ds.items["grade"]])
    weights = class_weights(train_grades, config.balance_alpha) if config.balance == "loss" else None
    arch = resolve_arch(config.arch)
    pool = pool_layer(config.pool)  # fastai sizes the head for its width: two features a channel, or one
    try:
        learn = vision_learner(dls, arch, pretrained=config.hub_weights, loss_func=head.loss(config.regression_loss,
                                                                                           weights),
                               metrics=metrics, ps=config.ps, wd=config.wd, path=path, model_dir=FoldFiles.CHECKPOINTS,
                               n_out=head.n_out, y_range=head.y_range, concat_pool=pool.factor == 2)
    except Exception as e:  # noqa: BLE001 - any failure to fetch weights ends the same way for the user
        if config.hub_weights and _looks_like_download_failure(e):
            raise UserError(_no_weights_message(config.arch, arch, e)) from None
        raise
    learn.model[1][0] = pool
    if learn.opt is not None:  # vision_learner froze the hub body, making the optimizer before the new pooling
        learn.opt = None
        learn.freeze()
    if config.pretrained_weights:
        from .weights import load_body_weights

        learn.weights_loaded = load_body_weights(learn.model[0], config.pretrained_weights)
    if config.starts_trained and not config.hub_weights and config.freeze_epochs > 0:
        learn.freeze()  # as vision_learner does for hub weights: the head trains alone first
    if config.mixed_precision and cuda_available():
        learn = learn.to_fp16()
        learn.add_cb(ChannelsLast())
    elif config.mixed_precision and cpu_has_native_bf16():
        learn.add_cbs([ChannelsLast(), CPUBFloat16()])
    elif cpu_prefers_channels_last(config.image_size):
        learn.add_cb(ChannelsLast())  # float32 on a CPU: faster from this size on (benchmarks/throughput.py)
    return learn


def remove_speed_callbacks(learn):
    """The learner as exported: float32, contiguous memory, no bf16 callbacks, so it predicts the same on any CPU."""
    from fastai.callback.channelslast import ChannelsLast

    from .callbacks import CPUBFloat16

    learn = learn.to_fp32()
    for cb in [cb for cb in learn.cbs if isinstance(cb, (ChannelsLast, CPUBFloat16))]:
        learn.remove_cb(cb)
    learn.model = learn.model.to(memory_format=torch.contiguous_format)
    return learn
