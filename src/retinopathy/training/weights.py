"""Starting weights from files instead of a hub: an ImageNet checkpoint for the body (``pretrained_weights``),
matched by name or, for ports whose names differ, by order and shape; or another experiment's trained fold
(``init_from``), e.g. pretrained on EyePACS 2015 and fine-tuned on APTOS 2019."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..paths import ExperimentFiles, FoldFiles

#: the wrappers checkpoints put around a state dict
_WRAPPERS = ("state_dict", "model_state_dict", "model", "net")
_PREFIXES = ("module.", "model.", "backbone.", "body.", "encoder.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a path, or ``package:<module>/<file>``): a plain state dict, or a checkpoint
    holding one."""
    from ..config import weights_path

    path = weights_path(str(path))
    if not path.is_file():
        raise UserError(f"pretrained_weights: {path} not found")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same mistake for the user
        raise UserError(f"pretrained_weights: {path} is not a PyTorch weights file ({type(e).__name__})") from None
    for key in _WRAPPERS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:
        raise UserError(f"pretrained_weights: {path} holds no state dict")
    return tensors


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return _strip(name[len(prefix):])
    return name


def _learnable(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """Tensors in order, without batch-norm's step counters (which some ports leave out)."""
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def match_weights(target: dict[str, torch.Tensor], source: dict[str, torch.Tensor],
                  origin: str) -> tuple[dict[str, torch.Tensor], str]:
    """``source``'s tensors under ``target``'s names: by name (prefixes like ``module.`` ignored) when every target
    tensor is found so; else by order and shape, the source's extra tensors at the end (a classifier) left over.
    Returns the new state and how it matched; a mismatch is one line naming the first pair that differs."""
    wanted = _learnable(target)
    by_name = {_strip(k): v for k, v in source.items()}
    named = {k: by_name.get(_strip(k)) for k, _ in wanted}
    if all(v is not None and v.shape == t.shape for (k, t), v in zip(wanted, named.values(), strict=False)):
        return {k: v.to(target[k].dtype) for k, v in named.items()}, f"{len(named)} tensors matched by name"
    given = _learnable(source)
    if len(given) < len(wanted):
        raise UserError(f"pretrained_weights: {origin} has {len(given)} tensors, the body of this arch needs "
                        f"{len(wanted)}: is it the weights of another architecture?")
    matched = {}
    for (name, tensor), (their_name, theirs) in zip(wanted, given, strict=False):
        if tensor.shape != theirs.shape:
            raise UserError(f"pretrained_weights: {origin}'s '{their_name}' {tuple(theirs.shape)} does not fit the "
                            f"body's '{name}' {tuple(tensor.shape)} (tensor {len(matched) + 1} in order): weights "
                            "of another architecture, or choose the arch they were made for")
        matched[name] = theirs.to(tensor.dtype)
    left = len(given) - len(wanted)
    return matched, f"{len(matched)} tensors matched by order and shape ({left} left over, e.g. a classifier)"


def load_body_weights(body: nn.Module, path: str | Path) -> str:
    """Load a weights file into the body of a fastai vision model; returns how it matched."""
    state = body.state_dict()
    # fastai's timm body wraps the network as ``model``: match against the network's own names
    matched, how = match_weights(state, read_state_dict(path), Path(path).name)
    body.load_state_dict({**state, **matched})
    return how


def trained_state(export: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A trained fold's tensors, keyed as ``Sequential(body, head)`` names them (``0.*`` body, ``1.*`` head), and
    the file they came from: its ``weights.pth``, read without unpickling code; only a fold made before those
    files existed is read from its ``export.pkl`` pickle, said in one line on stderr."""
    from ..experiment import load_learner_quietly

    weights = FoldFiles(export.parent).weights
    if weights.is_file():
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - cut short or not a state dict: the file is broken
            raise UserError(f"init_from: {weights} cannot be read ({type(e).__name__}): train that fold again") \
                from None
        return state, str(weights)
    print(f"init_from: {export.parent} has no {FoldFiles.WEIGHTS} (trained by an earlier version): reading "
          f"{export.name}, a pickle that runs whatever code it holds; start only from experiments you trust",
          file=sys.stderr)
    return load_learner_quietly(export).model.state_dict(), str(export)


def _part(state: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = f"{index}."
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def init_from_experiment(model: nn.Module, source: Path, fold: int) -> str:
    """Copy another experiment's trained fold into ``model`` (``Sequential(body, head)``): the body always (same
    architecture), the head only where its type and number of outputs fit; returns what was copied. Uses the
    source's fold of the same number, else its first trained fold."""
    source = Path(source)
    exports = ExperimentFiles(source).fold_files(FoldFiles.EXPORT)
    if not exports:
        raise UserError(f"init_from: no trained fold in {source} (models/<exp>/fold<K>/export.pkl): train that "
                        "experiment first")
    chosen = next((e for e in exports if e.parent == ExperimentFiles(source).fold(fold).dir), exports[0])
    state, origin = trained_state(chosen)
    body, theirs = model[0].state_dict(), _part(state, 0)
    if list(body) != list(theirs) or any(body[k].shape != theirs[k].shape for k in body):
        raise UserError(f"init_from: {origin} has another architecture's body than this config's arch: use the "
                        "same arch as the experiment it starts from")
    model[0].load_state_dict(theirs)
    head, their_head = model[1].state_dict(), _part(state, 1)
    if list(head) == list(their_head) and all(head[k].shape == their_head[k].shape for k in head):
        model[1].load_state_dict(their_head)
        return f"body and head from {origin}"
    return f"body from {origin} (head rebuilt: another head type or number of outputs)"
