"""An experiment: one config plus the paths it reads and writes, resolved once and shared by every stage, and the
fold artefacts it has produced so far."""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from .competitions import Competition, detect_competition
from .config import FIELDS, Config, file_digest, settings_difference
from .errors import UserError
from .files import locked, write_text
from .heads import Head, get_head
from .paths import MANIFEST, ExperimentFiles, FoldFiles, Paths


@dataclass(frozen=True)
class Experiment:
    """Where each stage of one config's pipeline finds its inputs and puts its outputs."""

    config: Config
    paths: Paths
    #: the folds a grading stage (predict, serve, interpret) uses where the user named them (``--folds``); by
    #: default every fold of the config, all of which must be trained
    only_folds: tuple[int, ...] | None = None

    @property
    def raw_dir(self) -> Path:
        """The competition folder in Kaggle layout."""
        if self.config.raw_dir:
            return Path(self.config.raw_dir).expanduser().resolve()
        return self.paths.raw(self.config.dataset_name)

    @functools.cached_property
    def head(self) -> Head:
        """The config's head, looked up once."""
        return get_head(self.config.head)

    @functools.cached_property
    def competition(self) -> Competition:
        """Which competition the raw folder holds, told by its files."""
        return detect_competition(self.raw_dir)

    @property
    def processed_dir(self) -> Path:
        """The preprocessed images of this config's method and size."""
        return self.paths.processed(self.config.dataset_name, self.config.preprocess, self.config.image_size)

    @property
    def manifest_csv(self) -> Path:
        """The preprocessing stage's table of every prepared image (id, split, status, path, ...)."""
        return self.processed_dir / MANIFEST

    @property
    def folds_csv(self) -> Path:
        """The folds CSV this config trains on."""
        config = self.config
        policy = config.conflicting_grades
        variant = ("" if policy == FIELDS["conflicting_grades"].default else f"-{policy}") + (
            "-gradable" if config.exclude_ungradable else "")
        return self.paths.folds(config.dataset_name, config.n_folds, config.seed, variant)

    def extra_sets(self) -> list[tuple[Path, Competition, Path, float]]:
        """Each ``extra_data`` set: its folder, the competition layout it has, where its training images are
        prepared (this config's method and size) and its sampling share."""
        sets, names = [], {self.config.dataset_name: self.raw_dir}
        for where, share in self.config.extra_sources:
            raw = Path(where)
            if not raw.is_absolute():
                raw = self.paths.raw(raw.name) if not raw.exists() else raw.resolve()
            if raw.resolve() == self.raw_dir.resolve():
                raise UserError(f"extra_data: {raw} is this experiment's own data: its images are already in the "
                                "folds (extra data is another labelled set)")
            if raw.name in names:  # prepared images are filed by folder name: two sets would share one folder
                raise UserError(f"extra_data: {raw} has the folder name '{raw.name}' of {names[raw.name]}, so their "
                                "prepared images would share one folder: rename one of the folders")
            names[raw.name] = raw
            sets.append((raw, detect_competition(raw), self.paths.processed(raw.name, self.config.preprocess,
                                                                           self.config.image_size), share))
        return sets

    @property
    def dir(self) -> Path:
        """The experiment's folder under models/."""
        return self.paths.experiment(self.config.name)

    @property
    def files(self) -> ExperimentFiles:
        """The experiment's own files (config, tuning, test outputs) and its folds'."""
        return ExperimentFiles(self.dir)

    def fold_files(self, fold: int) -> FoldFiles:
        """One fold's files."""
        return self.files.fold(fold)

    def fold_dir(self, fold: int) -> Path:
        """One fold's folder: export.pkl, oof.csv, history.csv, config.yaml, ..."""
        return self.paths.fold_dir(self.config.name, fold)

    def fold_lock(self, fold: int):
        """The lock of one fold's folder, held by whatever writes there (training, the ONNX export): a second
        writer is refused in one line naming the process that holds it."""
        return locked(self.fold_files(fold).lock, f"fold {fold} of {self.dir}")

    @property
    def submission(self) -> Path:
        """The submission CSV the prediction stage writes."""
        return self.paths.submission(self.config.name)

    def trained_folds(self) -> list[int]:
        """The folds whose exported learner exists."""
        return [k for k in range(self.config.n_folds) if self.fold_files(k).export.is_file()]

    def require_trained_folds(self) -> list[int]:
        """The folds a grading stage ensembles: every fold of the config (or those named in ``only_folds``), each
        trained; else a UserError naming the first missing one. An incomplete ensemble is never used silently."""
        folds = self.trained_folds()
        if not folds:
            raise UserError(f"no trained fold in {self.dir}: run retinopathy train first")
        wanted = list(self.only_folds) if self.only_folds is not None else list(range(self.config.n_folds))
        missing = [k for k in wanted if k not in folds]
        if missing:
            trained = ",".join(map(str, folds))
            hint = "" if self.only_folds is not None else f", or use only the trained ones: --folds {trained}"
            raise UserError(f"fold {missing[0]} of {self.dir} is not trained ({len(missing)} of {len(wanted)} "
                            f"missing): train it (retinopathy train --fold {missing[0]}){hint}")
        return wanted

    def fold_provenance(self, fold: int) -> dict | None:
        """What made a fold's export: its ``fingerprint.json`` (None where there is none)."""
        return read_provenance(self.fold_dir(fold))

    def folds_digest(self) -> str:
        """A hash of the folds CSV's content: which rows, graded how, validate which fold."""
        return file_digest(self.folds_csv)

    def fold_problem(self, fold: int) -> str | None:
        """Why the fold's export is not the model this config trains on these folds (None when it is): other
        model settings, or other training rows (the labels, the cleaning decisions or the copies found have
        changed the folds file since)."""
        record = self.fold_provenance(fold)
        problem = provenance_problem(record, self.config)
        if problem is None and self.folds_csv.is_file() and record.get("folds") != self.folds_digest():
            problem = (f"it was trained on other rows than {self.folds_csv} holds now (the labels, the cleaning "
                       "decisions or the copies found changed since)")
        return problem

    def fold_is_current(self, fold: int) -> bool:
        """Whether the fold's export exists and was trained with this config's model settings on these folds."""
        return self.fold_files(fold).export.is_file() and self.fold_problem(fold) is None

    def check_exports(self, folds: list[int] | None = None, any_export: bool = False) -> list[int]:
        """The trained folds (or ``folds``), each checked to have been trained with this config's model settings;
        a UserError names the first that was not, unless ``any_export``."""
        folds = self.require_trained_folds() if folds is None else folds
        for fold in [] if any_export else folds:
            problem = self.fold_problem(fold)
            if problem:
                raise UserError(f"{self.fold_files(fold).export}: {problem}: train fold {fold} again with "
                                f"this config (retinopathy train --fold {fold}), or pass --any-export to use it")
        return folds


def write_provenance(fold_dir: Path, config: Config, folds: str = "", synthetic: bool = False) -> Path:
    """Record beside a fold's export which settings made it, on which folds (``folds``: the folds CSV's digest when
    training read it), whether from a synthetic competition, and the digest of this very export (an ONNX file
    exported from an earlier training of the fold, even with the same settings, carries another) in
    ``fingerprint.json``; write it after the export."""
    files = FoldFiles(Path(fold_dir))
    return write_text(files.fingerprint, json.dumps(
        {"fingerprint": config.fingerprint, "folds": folds, "synthetic": synthetic,
         "export": file_digest(files.export) if files.export.is_file() else "",
         "settings": config.model_settings()}, indent=1, default=str))


def read_provenance(fold_dir: Path) -> dict | None:
    """A fold folder's ``fingerprint.json`` (None where it is missing or unreadable)."""
    try:
        return json.loads(FoldFiles(Path(fold_dir)).fingerprint.read_text())
    except (OSError, ValueError):
        return None


def provenance_problem(record: dict | None, config: Config) -> str | None:
    """Why an export described by ``record`` is not the model ``config`` trains (None when it is)."""
    if record is None:
        return (f"no {FoldFiles.FINGERPRINT} beside it (made by an older version, or its training was cut short), so "
                "what trained it is unknown")
    if record.get("fingerprint") == config.fingerprint:
        return None
    return settings_difference(record.get("settings", {}), config.model_settings())


def load_learner_quietly(path: Path, cpu: bool = True):
    """fastai's ``load_learner`` without its warning that pickles can run code: only files the operator named (or
    the experiment's own exports, found through its config) reach this point."""
    from fastai.learner import load_learner

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*insecure pickle.*")
        try:
            return load_learner(path, cpu=cpu)
        except (AttributeError, ModuleNotFoundError) as e:  # the pickle names a class or module no longer there
            why = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
            raise UserError(f"{path}: made by an earlier version of retinopathy, whose pickle this one cannot read "
                            f"({why}): train this fold again") from None
        except FileNotFoundError:
            raise UserError(f"{path} not found: train this fold first (retinopathy train)") from None
        except Exception as e:  # noqa: BLE001 - empty, cut short or not a pickle at all: the file is broken
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise UserError(f"{path}: not a complete export ({type(e).__name__}: {why}): delete it and train this "
                            "fold again (retinopathy train --fold K)") from None
