"""The two folders a code-competition submission is made of: a Kaggle dataset (the library's wheel, any wheel the
kernel's image lacks, the trained folds, their tuning and config; for pseudo-labels also each fold's weights and the
folds themselves) and a script kernel that installs from it offline and writes submission.csv (generated from
:mod:`retinopathy.kernel.template`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..config import file_digest
from ..errors import UserError
from ..experiment import Experiment
from ..files import locked, write_text
from ..inference.engines import get_engine
from ..inference.offline import BUNDLED_FOLDS
from ..metrics import TUNING
from ..paths import ExperimentFiles, FoldFiles
from ..progress import steps

#: what Kaggle's Python image already holds (and must not be bundled: a second torch would not fit, nor install)
KAGGLE_IMAGE = frozenset({
    "torch", "torchvision", "fastai", "fastcore", "timm", "albumentations", "opencv-python-headless", "numpy",
    "pandas", "pillow", "pyyaml", "scikit-learn", "scipy", "tqdm", "matplotlib", "protobuf", "sympy", "packaging",
    "mpmath",
})
#: Kaggle's GPU machines by the ``machine_shape`` its client sends (kernel-metadata.json), with what to say of each;
#: the default is the one Kaggle's own torch runs on (the P100, sm_60, is retired there and unsupported by it)
GPU_SHAPES = {"NvidiaTeslaT4": "2 x T4 (16 GB each, sm_75), Kaggle's default GPU",
              "NvidiaL4": "L4 (24 GB, sm_89)"}
RETIRED_GPUS = {"NvidiaTeslaP100": "retired by Kaggle, and its sm_60 is not in Kaggle's torch builds"}
DEFAULT_GPU = "NvidiaTeslaT4"
#: the file that marks the dataset (the kernel finds it by this name wherever Kaggle mounts it)
BUNDLE_MARK = "retinopathy-bundle.json"
TEMPLATE = Path(__file__).with_name("template.py")
#: a Kaggle reference: owner/slug (matched whole: no trailing newline)
REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*/[a-z0-9][a-z0-9-]{2,49}")
#: beside the two folders (never pushed): the digest of every file of both as built, what --no-build checks
BUILD_RECORD = "build.json"
#: Kaggle stops a code competition's kernel (CPU or GPU) after this many hours
KAGGLE_HOURS = 9


@dataclass(frozen=True)
class PseudoLabels:
    """The kernel's second stage: fine-tune every fold for ``epochs`` on its training part and the test images as
    the first stage graded them, within ``minutes`` of the kernel's start."""

    epochs: int = 2
    minutes: float = 360.0

    def check(self) -> PseudoLabels:
        """Itself, or one line saying which setting is out of range."""
        if not 1 <= self.epochs <= 50:
            raise UserError(f"--pseudo-epochs {self.epochs}: give 1 to 50 epochs of fine-tuning")
        if not 10 <= self.minutes <= KAGGLE_HOURS * 60 - 30:
            raise UserError(f"--pseudo-minutes {self.minutes:g}: give 10 to {KAGGLE_HOURS * 60 - 30} (Kaggle stops "
                            f"the kernel at {KAGGLE_HOURS} h; keep half an hour for installing and writing)")
        return self


@dataclass
class KernelBuild:
    """Where the dataset and kernel folders were written, and what they hold."""

    dataset_dir: Path
    kernel_dir: Path
    dataset: str
    kernel: str
    packages: list[str]
    seconds_per_image: float | None
    #: the second stage the kernel runs, if any
    pseudo: PseudoLabels | None = None


def check_ref(ref: str, what: str) -> str:
    """``owner/slug`` as Kaggle accepts it, or one line saying what is wrong."""
    if not REF.fullmatch(ref or ""):
        raise UserError(f"--{what} '{ref}': give OWNER/SLUG, the slug 3-50 lower-case letters, digits or dashes "
                        "(e.g. --{what} yourname/aptos-resnet-folds)".replace("{what}", what))
    return ref


def source_root() -> Path:
    """The checkout the library's wheel is built from: the one it is installed from (editable), else the working
    folder where that is a checkout of it (a regular install beside its clone, as on Colab)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        project = root / "pyproject.toml"
        if project.is_file() and re.search(r'^name = "retinopathy"$', project.read_text(), re.M):
            return root
    raise UserError("the kernel's dataset needs the library's wheel, built from a source checkout: run this from "
                    "a clone of the repository (or pip install -e '.[train]' from it)")


def _pip(*args: str, what: str, scratch: Path) -> None:
    scratch.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(scratch)})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"{what} failed: {last}")


def build_wheels(dest: Path, engine: str) -> list[str]:
    """The library's wheel and those the kernel's image lacks into ``dest``; returns what the kernel installs."""
    dest.mkdir(parents=True, exist_ok=True)
    root = source_root()
    # Every temporary file of the build (pip's too) lives beside dest, inside the folder being built: a killed
    # build leaves nothing elsewhere, and the next build removes that folder whole.
    scratch = dest.parent / ".scratch"
    # Built from a copy: setuptools leaves build/ and *.egg-info/ beside the sources it builds, and the user's
    # checkout is no place for them.
    copy = scratch / "retinopathy"
    shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(root / name, copy / name)
    _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(copy),
         what="building the library's wheel", scratch=scratch / "pip")
    extra = [p for p in get_engine(engine).packages if p not in KAGGLE_IMAGE]
    if extra:
        _pip("download", "--quiet", "--only-binary=:all:", "--dest", str(dest), *extra,
             what=f"downloading {', '.join(extra)}", scratch=scratch / "pip")
        for wheel in dest.glob("*.whl"):  # what the image has stays out of the dataset
            if wheel.name.split("-")[0].lower().replace("_", "-") in KAGGLE_IMAGE:
                wheel.unlink()
    return ["retinopathy", *extra]


def bundle_files(experiment: Experiment, engine: str, folds: list[int], pseudo: bool = False) -> dict[str, Path]:
    """Every file a bundle of ``folds`` holds from the experiment, by its path in the bundle: each fold's model file
    (for ``engine``), config and fingerprint, and the tuning; with ``pseudo`` also each fold's weights and the
    folds CSV the second stage trains on again."""
    name, model = experiment.config.name, get_engine(engine).model_file
    fold_files = (model, FoldFiles.CONFIG, FoldFiles.FINGERPRINT) + ((FoldFiles.WEIGHTS,) if pseudo else ())
    files = {f"models/{name}/fold{k}/{f}": experiment.fold_dir(k) / f for k in folds for f in fold_files}
    files[f"models/{name}/{TUNING}"] = experiment.dir / TUNING
    if pseudo:
        files[f"models/{name}/{BUNDLED_FOLDS}"] = experiment.folds_csv
    return files


def _copy_models(experiment: Experiment, dest: Path, engine: str, folds: list[int], pseudo: bool) -> None:
    """The files of :func:`bundle_files` (there and loadable: check_bundle and load_bundle said so), as laid out in
    ``models/<exp>/``, and this build's config."""
    for where, source in bundle_files(experiment, engine, folds, pseudo).items():
        target = dest.parent / where
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    experiment.config.save(ExperimentFiles(dest / experiment.config.name).config)  # the kernel grades as it says


def bundled_models(experiment: Experiment, engine: str, folds: list[int], pseudo: bool = False) -> dict[str, str]:
    """The digest of every model file, weights file, folds CSV and tuning a bundle of ``folds`` holds, by its path
    in the bundle."""
    files = bundle_files(experiment, engine, folds, pseudo)
    return {where: file_digest(path) for where, path in files.items()
            if path.name not in (FoldFiles.CONFIG, FoldFiles.FINGERPRINT)}


def check_bundle(experiment: Experiment, any_export: bool = False, pseudo: bool = False) -> list[int]:
    """What a kernel needs before anything is copied: every fold of the config trained (and current, unless
    ``any_export``), and the grade rule tuned on their out-of-fold outputs for these settings; with ``pseudo``,
    each fold's weights and the folds CSV they were trained on. The folds, or one line saying what is missing and
    how to make it."""
    config, trained = experiment.config, experiment.trained_folds()
    missing = [k for k in range(config.n_folds) if k not in trained]
    if missing:
        first = experiment.fold_files(missing[0]).export
        raise UserError(f"kernel: fold{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} of the config's "
                        f"{config.n_folds} not trained ({first} missing): a kernel ships every fold; train "
                        f"{'them' if len(missing) > 1 else 'it'} (retinopathy train --fold {missing[0]}) or run "
                        "retinopathy pipeline")
    folds = experiment.check_exports(trained, any_export=any_export)
    tuning = experiment.dir / TUNING
    try:
        tuned_for = json.loads(tuning.read_text()).get("fingerprint")
    except (OSError, ValueError):
        raise UserError(f"kernel: {tuning} missing or unreadable: run retinopathy predict --config "
                        f"{experiment.files.config} first (it tunes the grade rule on the out-of-fold "
                        "outputs)") from None
    if tuned_for != config.fingerprint and not any_export:
        raise UserError(f"kernel: {tuning} was tuned on the outputs of other settings than this config's: run "
                        f"retinopathy predict --config {experiment.files.config} again")
    if pseudo:
        for fold in folds:
            if not experiment.fold_files(fold).weights.is_file():
                raise UserError(f"kernel --pseudo-label: {experiment.fold_files(fold).weights} missing (trained by an "
                                f"earlier version): train fold {fold} again (retinopathy train --fold {fold})")
        if not experiment.folds_csv.is_file():
            raise UserError(f"kernel --pseudo-label: {experiment.folds_csv} missing: the second stage trains each "
                            "fold on its own rows again; run retinopathy folds with this config")
    return folds


def write_dataset(experiment: Experiment, dataset: str, engine: str, dest: Path, folds: list[int],
                  pseudo: PseudoLabels | None = None) -> list[str]:
    """The dataset folder: metadata, wheels, models and the bundle's mark. Built beside ``dest`` and swapped in
    whole, so an interrupted build never leaves half a dataset to push."""
    building = dest.with_name(dest.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    slug = dataset.split("/")[1]
    title = f"{experiment.config.name} retinopathy models"[:50].ljust(6, ".")
    write_text(building / "dataset-metadata.json", json.dumps(
        {"title": title, "id": dataset, "licenses": [{"name": "CC0-1.0"}],
         "description": f"Trained folds of the retinopathy experiment '{experiment.config.name}' and the wheels to "
                        "install the library offline; made by `retinopathy kernel`."}, indent=1))
    packages = build_wheels(building / "wheels", engine)
    shutil.rmtree(building / ".scratch")
    _copy_models(experiment, building / "models", engine, folds, pseudo is not None)
    write_text(building / BUNDLE_MARK, json.dumps(
        {"experiment": experiment.config.name, "competition": experiment.competition.slug, "engine": engine,
         "folds": folds, "fingerprint": experiment.config.fingerprint, "packages": packages,
         "pseudo_label": dataclasses.asdict(pseudo) if pseudo else None,
         "files": bundled_models(experiment, engine, folds, pseudo is not None),
         "library": metadata.version("retinopathy"), "dataset": slug,
         "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1))
    if dest.exists():
        shutil.rmtree(dest)
    building.rename(dest)
    return packages


def kernel_source(competition: str, dataset: str, engine: str, packages: list[str]) -> str:
    """The kernel's script: the library's template with this build's names filled in."""
    text = TEMPLATE.read_text()
    for key, value in {"__COMPETITION__": competition, "__DATASET__": dataset, "__ENGINE__": engine,
                       "__PACKAGES__": " ".join(packages)}.items():
        text = text.replace(f'"{key}"', json.dumps(value))
    return text


def check_gpu(shape: str | None) -> str | None:
    """A ``machine_shape`` for Kaggle's client, or one line saying why not."""
    if shape is None or shape in GPU_SHAPES:
        return shape
    if shape in RETIRED_GPUS:
        raise UserError(f"--gpu {shape}: {RETIRED_GPUS[shape]}; use --gpu (the {DEFAULT_GPU}) or "
                        f"--gpu {' / '.join(GPU_SHAPES)}")
    raise UserError(f"--gpu {shape}: not a Kaggle GPU this toolkit knows; choose {' or '.join(GPU_SHAPES)}")


def write_kernel(experiment: Experiment, dataset: str, kernel: str, engine: str, gpu: str | None,
                 packages: list[str], dest: Path) -> Path:
    """The kernel folder: ``kernel-metadata.json`` (a private script kernel, internet off, the competition and the
    dataset attached, the GPU machine by the ``machine_shape`` Kaggle's client sends, or none) and its script."""
    slug = kernel.split("/")[1]
    code_file = f"{slug}.py"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    write_text(dest / code_file, kernel_source(experiment.competition.slug, dataset, engine, packages))
    write_text(dest / "kernel-metadata.json", json.dumps(
        {"id": kernel, "title": slug.replace("-", " "), "code_file": code_file, "language": "python",
         "kernel_type": "script", "is_private": True, "enable_gpu": bool(gpu), "enable_tpu": False,
         **({"machine_shape": gpu} if gpu else {}),
         # the client's default is internet on; a code competition refuses a kernel with internet
         "enable_internet": False, "dataset_sources": [dataset],
         "competition_sources": [experiment.competition.slug], "kernel_sources": [], "model_sources": []},
        indent=1))
    return dest


def load_bundle(experiment: Experiment, engine: str, folds: list[int], any_export: bool = False):
    """The folds as the kernel will run them, loaded here first: a broken or missing model file, or an ONNX file
    exported from another training of its fold, is refused in one line (the grader's own) before anything is
    copied."""
    from ..inference.grader import Grader

    return Grader([experiment.fold_files(k).export for k in folds], engine=engine, any_export=any_export,
                  tta=experiment.config.tta)


def measure_speed(experiment: Experiment, grader, n_images: int = 16) -> float | None:
    """Seconds per test image of the kernel's work (decode, prepare, every fold, TTA) on this machine's CPU,
    timed with the bundle's ``grader`` on up to ``n_images`` of the competition's images; None where there are
    none."""
    from ..inference.offline import seconds_per_image

    competition, raw = experiment.competition, experiment.raw_dir
    images = sorted((raw / competition.test_images).glob(f"*{competition.image_suffix}"))[:n_images] or \
        sorted((raw / competition.train_images).glob(f"*{competition.image_suffix}"))[:n_images]
    if not images:
        return None
    seconds_per_image(grader, images[:2])  # the first call pays for lazy initialisation
    return seconds_per_image(grader, images)


def build_kernel(experiment: Experiment, dataset: str, kernel: str, engine: str = "torch", gpu: str | None = None,
                 root: Path = Path("kaggle"), measure: bool = True, any_export: bool = False,
                 show: bool = True, pseudo: PseudoLabels | None = None) -> KernelBuild:
    """Write ``<root>/<exp>/dataset/`` and ``<root>/<exp>/kernel/`` for a code competition, saying each step
    (``show``); with ``pseudo``, a kernel that also fine-tunes the folds on the test images it grades."""
    check_ref(dataset, "dataset")
    check_ref(kernel, "kernel")
    gpu = check_gpu(gpu)
    if not experiment.competition.code_competition:
        raise UserError(f"{experiment.competition.slug} takes CSV submissions: use retinopathy submit with the "
                        "CSV that retinopathy predict writes")
    get_engine(engine)
    if pseudo is not None:
        pseudo.check()
        if engine != "torch":
            raise UserError(f"kernel --pseudo-label trains the folds again with PyTorch inside the kernel: use "
                            f"--engine torch (not {engine})")
    folds = check_bundle(experiment, any_export, pseudo is not None)  # before anything is built
    step = steps("kernel", 3 + measure, show)
    step(f"loading the {len(folds)} fold(s) as the kernel will run them ({engine})")
    grader = load_bundle(experiment, engine, folds, any_export)
    base = root / experiment.config.name
    # two builds at once would share pip's build folder and the bundle: the second is refused in one line
    with locked(root / f".{experiment.config.name}.build.lock", f"the kernel build in {base}"):
        return _build(experiment, dataset, kernel, engine, gpu, base, measure, step, pseudo, folds, grader)


def _build(experiment: Experiment, dataset: str, kernel: str, engine: str, gpu: str | None, base: Path,
           measure: bool, step, pseudo: PseudoLabels | None, folds: list[int], grader) -> KernelBuild:
    """:func:`build_kernel`'s writing, under the build's lock."""
    (base / BUILD_RECORD).unlink(missing_ok=True)  # a build cut short is never taken as whole
    step("building the library's wheel and the dataset folder")
    packages = write_dataset(experiment, dataset, engine, base / "dataset", folds, pseudo)
    step("writing the kernel's script")
    write_kernel(experiment, dataset, kernel, engine, gpu, packages, base / "kernel")
    write_text(base / BUILD_RECORD, json.dumps(folder_digests(base), indent=1))
    if measure:
        step("timing the kernel's work on this machine's CPU")
    per_image = measure_speed(experiment, grader) if measure else None
    return KernelBuild(base / "dataset", base / "kernel", dataset, kernel, packages, per_image, pseudo)


def folder_digests(base: Path) -> dict[str, str]:
    """The digest of every file in a build's dataset and kernel folders, by its path under ``base``."""
    return {str(p.relative_to(base)): file_digest(p) for folder in ("dataset", "kernel")
            for p in sorted((base / folder).rglob("*")) if p.is_file()}


def _read_json(path: Path, keys: tuple[str, ...]) -> dict:
    """A build's JSON file, or one line saying it is missing or malformed."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = "missing" if isinstance(e, FileNotFoundError) else "not readable JSON"
        raise UserError(f"{path}: {why}: run without --no-build to build the kernel again") from None
    if not isinstance(loaded, dict) or any(k not in loaded for k in keys):
        raise UserError(f"{path}: not as a build writes it (needs {', '.join(keys)}): run without --no-build to "
                        "build the kernel again")
    return loaded


def existing_build(experiment: Experiment, dataset: str, kernel: str, root: Path = Path("kaggle")) -> KernelBuild:
    """The folders an earlier build wrote (to push again without rebuilding), checked against this config and
    these names, and file by file against what the build wrote: a changed, added or removed file (the wheel, the
    script, a bundled config) is refused."""
    base = root / experiment.config.name
    mark, meta = base / "dataset" / BUNDLE_MARK, base / "kernel" / "kernel-metadata.json"
    if not mark.is_file() or not meta.is_file() or not (base / BUILD_RECORD).is_file():
        raise UserError(f"{base}: no complete kernel build there: run without --no-build first")
    recorded, present = _read_json(base / BUILD_RECORD, ()), folder_digests(base)
    changed = sorted(set(recorded) ^ set(present)) + sorted(k for k in recorded if present.get(k, recorded[k]) !=
                                                            recorded[k])
    if changed:
        what = "added" if changed[0] in present and changed[0] not in recorded else \
            "missing" if changed[0] not in present else "changed"
        raise UserError(f"{base / changed[0]}: {what} since the build: run without --no-build to build the bundle "
                        "again")
    bundle = _read_json(mark, ("fingerprint", "files", "engine", "folds", "packages"))
    kernel_meta = _read_json(meta, ("id",))
    if bundle["fingerprint"] != experiment.config.fingerprint:
        raise UserError(f"{mark}: built from models of other settings than this config: run without --no-build")
    for where, digest in bundle.get("files", {"models": "an older bundle"}).items():
        copied = file_digest(base / "dataset" / where)
        if copied != digest:
            raise UserError(f"{base / 'dataset' / where}: {'missing' if copied.startswith('missing') else 'changed'}"
                            " since the build: run without --no-build to build the bundle again")
    if bundle.get("files") != bundled_models(experiment, bundle["engine"], bundle["folds"],
                                             bool(bundle.get("pseudo_label"))):
        raise UserError(f"{base / 'dataset'}: holds other models than {experiment.dir} now (trained or tuned "
                        "since the build): run without --no-build")
    dataset_meta = _read_json(base / "dataset" / "dataset-metadata.json", ("id",))
    if (dataset_meta["id"], kernel_meta["id"]) != (dataset, kernel):
        raise UserError(f"{base}: built for --dataset {dataset_meta['id']} --kernel {kernel_meta['id']}: run "
                        "without --no-build to build for these names")
    pseudo = bundle.get("pseudo_label")
    return KernelBuild(base / "dataset", base / "kernel", dataset, kernel, bundle["packages"], None,
                       PseudoLabels(**pseudo) if pseudo else None)
