"""The one path from prepared images to outputs and grades: every trained fold of an experiment (or the folds named),
run by an engine, averaged over the folds and the test-time views, graded by the experiment's rule.

Training's out-of-fold predictions, ``predict`` (the submission), the offline Kaggle kernel, the ONNX export check,
the interpretation report and the web app all grade through :class:`Grader`, so they cannot drift apart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..config import load_config
from ..device import cuda_available
from ..errors import UserError
from ..experiment import provenance_problem, read_provenance
from ..heads import get_head
from ..metrics import GradeRule
from ..paths import ExperimentFiles, FoldFiles
from ..preprocessing.image_io import Examined, examine_image, run_on_files
from .engines import engine_of_file, get_engine, tta_views


def engine_file(path: Path, engine: str) -> Path:
    """The file a fold runs from with ``engine``: an ``.onnx`` path as given, else the engine's file beside it
    (``export.pkl`` for the torch engines, the ONNX files ``export-onnx`` wrote)."""
    path = Path(path)
    if path.suffix == ".onnx":
        return path
    wanted = path.parent / get_engine(engine).model_file
    if not wanted.is_file():
        raise UserError(f"{wanted} not found: make it with retinopathy export-onnx --config "
                        f"{FoldFiles(path.parent).config} (or use --engine torch)")
    return wanted


def check_model_paths(paths: list[Path]) -> list:
    """Each model's training config (from beside it), or a UserError naming what is missing or mismatched."""
    if not paths:
        raise UserError("no model to grade with: pass --config (its trained folds) or --model path/to/export.pkl "
                        "(or model.onnx)")
    configs = []
    for p in map(Path, paths):
        if not p.is_file():
            raise UserError(f"{p}: model file not found")
        config_file = FoldFiles(p.parent).config
        if not config_file.is_file():
            raise UserError(f"{config_file} not found: the config that trained {p.name} must sit beside it "
                            "(retinopathy train writes it there) so the same preprocessing is applied")
        configs.append(load_config(config_file))
    first = configs[0]
    for p, c in zip(paths[1:], configs[1:], strict=False):
        if (c.preprocess, c.image_size, c.head) != (first.preprocess, first.image_size, first.head):
            raise UserError(f"{p}: trained with preprocess={c.preprocess}, image_size={c.image_size}, head={c.head}; "
                            f"{paths[0]} with {first.preprocess}, {first.image_size}, {first.head}: grade with "
                            "the models of one experiment together")
    return configs


def check_provenance(model_file: Path, config, onnx_fingerprint: str | None = None,
                     onnx_export: str | None = None) -> None:
    """Refuse a model file that was not made by the config beside it: an ``export.pkl`` whose ``fingerprint.json``
    says otherwise (or is missing), or an ONNX file whose metadata does, or that was exported from another
    training of the fold than the one ``fingerprint.json`` records (a retrain, even with the same settings)."""
    if model_file.suffix == ".onnx":
        current = (read_provenance(model_file.parent) or {}).get("export")
        if onnx_fingerprint == config.fingerprint and (not current or onnx_export == current):
            return
        problem = ("no training fingerprint in its metadata (exported by an older version)" if onnx_fingerprint is None
                   else f"exported from a model trained with other settings (fingerprint {onnx_fingerprint}) than "
                        f"config.yaml beside it ({config.fingerprint})" if onnx_fingerprint != config.fingerprint
                   else "exported from an earlier training of this fold, not the export.pkl that "
                        f"{model_file.parent.name}/fingerprint.json records now")
        raise UserError(f"{model_file}: {problem}: export it again (retinopathy export-onnx --force), or pass "
                        "--any-export to use it anyway")
    problem = provenance_problem(read_provenance(model_file.parent), config)
    if problem:
        raise UserError(f"{model_file}: {problem} (config.yaml beside it): train it again, or pass --any-export "
                        "to use it anyway")


def models_in_folder(folder: Path, engine: str) -> list[Path]:
    """The trained folds in an experiment's folder (``fold<K>/``), as the files ``engine`` runs from: what a
    container mounts at ``/models``, what a kernel's bundle holds."""
    name = get_engine(engine).model_file
    found = ExperimentFiles(Path(folder)).fold_files(name)
    if not found:
        raise UserError(f"{folder}: no {ExperimentFiles.FOLDS}/{name} for the {engine} engine (give an experiment's "
                        "folder, models/<exp>/, with its ONNX files from retinopathy export-onnx)")
    return found


class Grader:
    """One or more trained folds of one experiment, and everything needed to grade prepared images with them.

    ``engine`` says how the folds run (:data:`~retinopathy.inference.engines.ENGINES`); an ``.onnx`` path always
    runs in ONNX Runtime. ``tta`` averages the flipped views too; by default the experiment's config says (its
    ``config.yaml`` beside the folds, else the folds' own)."""

    def __init__(self, model_paths: list[Path], threads: int | None = None, engine: str = "torch",
                 any_export: bool = False, device: str = "cpu", tta: bool | None = None):
        get_engine(engine)
        self.paths = [Path(p).resolve() for p in model_paths]
        self.configs = configs = check_model_paths(self.paths)
        self.config = first = configs[0]
        self.head = get_head(first.head)
        self.method, self.size = first.preprocess, first.image_size
        # fold<K>/<file>: the experiment's folder, with its tuning.json and config.yaml, is two levels up
        experiment_dir = self.paths[0].parent.parent
        if tta is None:
            saved = ExperimentFiles(experiment_dir).config
            tta = (load_config(saved) if saved.is_file()
                   else first).tta
        self.tta = tta
        self.rule = GradeRule.read(experiment_dir, first.head)
        self.files = [engine_file(p, engine) for p in self.paths]
        engines = [engine_of_file(f, engine) for f in self.files]
        self.engine = engines[0].name if len({e.name for e in engines}) == 1 else engine
        onnx = [f for f, e in zip(self.files, engines, strict=False) if e.onnx]
        self.can_explain = not onnx
        #: why there can be no heat map (None where there can): every model must run in PyTorch
        self.why_no_explanation = None if not onnx else (
            f"explanations need the torch engine (this server runs {self.engine}): start it with --engine torch"
            if len(onnx) == len(self.files) else
            f"explanations need every model in PyTorch, and {len(onnx)} of these {len(self.files)} are ONNX files "
            f"({onnx[0].name}): serve the folds' export.pkl files only")
        if not any_export:  # a pickle of unknown or other origin is refused before it is unpickled
            for f, e, config in zip(self.files, engines, configs, strict=False):
                if not e.onnx:
                    check_provenance(f, config)
        self.runners = [e.runner(f, config, threads, device)
                        for f, e, config in zip(self.files, engines, configs, strict=False)]
        for f, run in zip(self.files, self.runners, strict=False):
            if getattr(run, "image_size", self.size) not in (self.size, None):
                raise UserError(f"{f} takes {run.image_size} px images but config.yaml beside it says image_size="
                                f"{self.size}: export it again (retinopathy export-onnx --force)")
        if not any_export:  # an ONNX file carries its fingerprint in its metadata, read once its session is open
            for f, e, run, config in zip(self.files, engines, self.runners, configs, strict=False):
                if e.onnx:
                    check_provenance(f, config, run.fingerprint, getattr(run, "export", None))
        digest = hashlib.sha256()
        for f in self.files:
            digest.update(f.read_bytes())
        self.model_id = f"{first.name}-{len(self.files)}x{first.arch}-{self.engine}-{digest.hexdigest()[:10]}"
        # read once: the card is asked for on every /health
        self.synthetic = bool((read_provenance(self.paths[0].parent) or {}).get("synthetic")) or \
            first.synthetic_images > 0

    @property
    def card(self) -> dict:
        """What a person deciding whether to trust an answer asks of the model: which experiment, architecture,
        size and head, how many folds, its out-of-fold QWK and referable-DR AUC (from ``tuning.json``, where
        ``predict`` recorded them), its fingerprint, and whether it learnt from the synthetic demo competition."""
        config, extra = self.config, self.rule.extra
        return {"experiment": config.name, "competition": config.competition, "dataset": config.dataset_name,
                "arch": config.arch, "image_size": config.image_size, "head": config.head, "folds": len(self.files),
                "engine": self.engine, "tta": self.tta, "fingerprint": config.fingerprint,
                "cv_qwk": extra.get("oof_qwk_tuned"),
                "referable_auc": extra.get("referable_auc"), "referable_auc_low": extra.get("referable_auc_low"),
                "referable_auc_high": extra.get("referable_auc_high"), "synthetic": self.synthetic}

    @classmethod
    def of_experiment(cls, experiment, engine: str = "torch", any_export: bool = False, folds: list[int] | None = None,
                      **options) -> Grader:
        """Every trained fold of an experiment (or ``folds``), each checked to be current unless ``any_export``;
        on a GPU where there is one and the engine is PyTorch's."""
        folds = experiment.check_exports(folds, any_export=any_export)
        if not get_engine(engine).onnx and "device" not in options:
            options["device"] = "cuda" if cuda_available() else "cpu"
        return cls([experiment.fold_files(k).export for k in folds], engine=engine, any_export=any_export,
                   **options)

    # --------------------------------------------------------------------------------------- grading
    def examine(self, image: np.ndarray, original: tuple[int, int] | None = None) -> Examined:
        """A decoded photograph prepared exactly as training prepared its images, and assessed: can it be graded
        at all?"""
        return examine_image(image, self.method, self.size, original, hashed=False)

    def outputs(self, images: np.ndarray, tta: bool | None = None) -> np.ndarray:
        """Fold- and view-averaged served outputs for prepared images (N, H, W, 3)."""
        views = tta_views(images, self.tta if tta is None else tta)
        return np.mean([run(np.ascontiguousarray(view)) for run in self.runners for view in views], axis=0)

    def outputs_of_files(self, paths: list[str], batch: int = 32, progress=None, tta: bool | None = None) -> np.ndarray:
        """:meth:`outputs` for prepared images on disk, ``batch`` at a time (``progress(done, total)`` after each)."""
        return run_on_files(lambda images: self.outputs(images, tta), paths, len(self.head.columns), batch, progress)

    def grades(self, outputs: np.ndarray, ids=None) -> np.ndarray:
        """Grades of served outputs by the experiment's rule (``ids`` enable EyePACS eye blending)."""
        return self.rule.grades(outputs, ids)

    def explanation(self, image: np.ndarray, grade: int) -> np.ndarray:
        """The Grad-CAM heat map (H x W, 0..1) of a prepared image for ``grade``, averaged over the folds."""
        if not self.can_explain:
            raise UserError(self.why_no_explanation)
        from .explain import heat_map

        return heat_map([run.model for run in self.runners], image, grade)

