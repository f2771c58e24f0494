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
        return self.experiment(name) / f"fold{fold}"

    def submission(self, name: str) -> Path:
        """An experiment's submission CSV."""
        return self.submissions / f"{name}.csv"
