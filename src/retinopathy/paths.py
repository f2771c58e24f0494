"""Every path the pipeline reads or writes, defined once.

The data root is ``./data`` unless ``RETINOPATHY_DATA_DIR`` or ``--data-dir`` says otherwise; models, submissions
and reports sit beside it under the working directory (``RETINOPATHY_OUTPUT_DIR`` moves them together).
Raw data is immutable: nothing in the project writes below ``raw/`` except the download stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "RETINOPATHY_DATA_DIR"


@dataclass(frozen=True)
class FoldFiles:
    """Every file of one trained fold's folder (``models/<exp>/fold<K>/``): the one place their names are written.
    The bare names are class attributes, for what lays them out elsewhere (a kernel's bundle, a glob)."""

    EXPORT = "export.pkl"
    WEIGHTS = "weights.pth"
    FINGERPRINT = "fingerprint.json"
    OOF = "oof.csv"
    HISTORY = "history.csv"
    CONFIG = "config.yaml"
    ONNX = "model.onnx"
    INT8 = "model-int8.onnx"
    ONNX_REPORT = "onnx.json"
    #: fastai's model folder, and the checkpoints it saves there by name (``learn.save``)
    CHECKPOINTS, BEST, LAST = "checkpoints", "best", "last"

    dir: Path

    @property
    def export(self) -> Path:
        """The learner fastai exported (a pickle: loading it runs code)."""
        return self.dir / self.EXPORT

    @property
    def weights(self) -> Path:
        """The model's tensors alone, read without unpickling code (``init_from``, pseudo-labels)."""
        return self.dir / self.WEIGHTS

    @property
    def fingerprint(self) -> Path:
        """What made the export: the settings' fingerprint, the folds, the export's digest; written last."""
        return self.dir / self.FINGERPRINT

    @property
    def oof(self) -> Path:
        """The out-of-fold outputs on the fold's validation images."""
        return self.dir / self.OOF

    @property
    def history(self) -> Path:
        """One row per epoch: losses and metrics."""
        return self.dir / self.HISTORY

    @property
    def config(self) -> Path:
        """The resolved config that trained it."""
        return self.dir / self.CONFIG

    @property
    def loss_plot(self) -> Path:
        """The loss curves."""
        return self.dir / "loss.png"

    @property
    def lr_find(self) -> tuple[Path, Path, Path]:
        """The learning-rate finder's plot, curve and suggestion."""
        return self.dir / "lr_find.png", self.dir / "lr_find.csv", self.dir / "lr_find.json"

    @property
    def resume_state(self) -> Path:
        """Where an interrupted training stands (phase, epoch, best so far)."""
        return self.dir / "resume.json"

    @property
    def checkpoints(self) -> Path:
        """fastai's model folder: the best and the last epoch's checkpoints while training."""
        return self.dir / self.CHECKPOINTS

    @property
    def last_checkpoint(self) -> Path:
        """The last finished epoch's model and optimizer."""
        return self.checkpoints / f"{self.LAST}.pth"

    @property
    def onnx_report(self) -> Path:
        """What the ONNX export measured against PyTorch."""
        return self.dir / self.ONNX_REPORT

    @property
    def lock(self) -> Path:
        """Held by whatever writes in the folder (training, the ONNX export)."""
        return self.dir / ".lock"


@dataclass(frozen=True)
class ExperimentFiles:
    """Every file of one experiment's folder (``models/<exp>/``) besides its folds'."""

    CONFIG = "config.yaml"
    TUNING = "tuning.json"
    TEST_OUTPUTS = "test_outputs.csv"
    #: a kernel's bundle of an experiment for pseudo-labels: the folds it was trained on, for its second stage
    BUNDLED_FOLDS = "folds.csv"
    #: the fold folders, as a glob
    FOLDS = "fold*"

    dir: Path

    @property
    def config(self) -> Path:
        """The resolved config every fold trained with (``--config`` re-runs it)."""
        return self.dir / self.CONFIG

    @property
    def tuning(self) -> Path:
        """The grade rule tuned on the out-of-fold outputs."""
        return self.dir / self.TUNING

    @property
    def test_outputs(self) -> Path:
        """Every test image's fold-averaged output (what ``pseudo_labels`` reads)."""
        return self.dir / self.TEST_OUTPUTS

    def fold(self, fold: int) -> FoldFiles:
        """One fold's files."""
        return FoldFiles(self.dir / f"fold{fold}")

    def train_log(self, fold: int | str) -> Path:
        """A fold's output when trained beside others (``folds_at_once``)."""
        return self.dir / f"train-fold{fold}.log"

    def fold_files(self, name: str) -> list[Path]:
        """A file of every fold folder there is (``export.pkl``, ``model.onnx``, ...), in fold order."""
        return sorted(self.dir.glob(f"{self.FOLDS}/{name}"))
#: the preprocessing stage's table of every image it prepared (one per processed folder)
MANIFEST = "manifest.csv"
OUTPUT_DIR_ENV = "RETINOPATHY_OUTPUT_DIR"


@dataclass(frozen=True)
class Paths:
    """The project's folders; derive every file location from here."""

    data: Path
    output: Path

    @classmethod
    def default(cls, data_dir: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None) -> Paths:
        """Paths from the arguments, else the environment, else ``./data`` and ``.``."""
        data = data_dir or os.environ.get(DATA_DIR_ENV) or "data"
        output = output_dir or os.environ.get(OUTPUT_DIR_ENV) or "."
        return cls(Path(data).expanduser().resolve(), Path(output).expanduser().resolve())

    @property
    def models(self) -> Path:
        """Every experiment's trained folds, one folder per experiment."""
        return self.output / "models"

    @property
    def submissions(self) -> Path:
        """Submission CSVs, one per experiment or ensemble."""
        return self.output / "submissions"

    @property
    def reports(self) -> Path:
        """Interpretation pages and the results table."""
        return self.output / "reports"

    def raw(self, dataset: str) -> Path:
        """Where a competition's download lives, exactly as Kaggle lays it out."""
        return self.data / "raw" / dataset

    def processed(self, dataset: str, method: str, size: int) -> Path:
        """The preprocessed image cache for one method and size."""
        return self.data / "processed" / dataset / f"{method}-{size}"

    def folds(self, dataset: str, n_folds: int, seed: int, variant: str = "") -> Path:
        """The folds CSV (id, grade, fold, group) of one split (``variant``: what else chose its rows)."""
        return self.data / "processed" / dataset / f"folds-{n_folds}-seed{seed}{variant}.csv"

    def duplicates(self, dataset: str) -> Path:
        """The table of copies of one photograph among a dataset's images."""
        return self.data / "cleaning" / f"{dataset}-duplicates.csv"

    def quarantine(self, dataset: str) -> Path:
        """The table of a dataset's images that do not decode (verify's record; the files stay in raw/)."""
        return self.data / "cleaning" / f"{dataset}-quarantine.csv"

    def experiment(self, name: str) -> Path:
        """An experiment's folder of trained folds."""
        return self.models / name

    def fold_dir(self, name: str, fold: int) -> Path:
        """One fold's outputs."""
        return ExperimentFiles(self.experiment(name)).fold(fold).dir

    def submission(self, name: str) -> Path:
        """An experiment's submission CSV."""
        return self.submissions / f"{name}.csv"
