"""An experiment: one config plus the paths it reads and writes, resolved once and shared by every stage."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .competitions import Competition, detect_competition
from .config import Config
from .paths import Paths


@dataclass(frozen=True)
class Experiment:
    """Where each stage of one config's pipeline finds its inputs and puts its outputs."""

    config: Config
    paths: Paths

    @property
    def raw_dir(self) -> Path:
        if self.config.raw_dir:
            return Path(self.config.raw_dir).expanduser().resolve()
        return self.paths.raw(self.config.dataset_name)

    @functools.cached_property
    def competition(self) -> Competition:
        return detect_competition(self.raw_dir)

    @property
    def processed_dir(self) -> Path:
        return self.paths.processed(self.config.dataset_name, self.config.preprocess, self.config.image_size)

    @property
    def folds_csv(self) -> Path:
        return self.paths.folds(self.config.dataset_name, self.config.n_folds, self.config.seed)

    @property
    def dir(self) -> Path:
        return self.paths.experiment(self.config.name)

    def fold_dir(self, fold: int) -> Path:
        return self.paths.fold_dir(self.config.name, fold)

    @property
    def submission(self) -> Path:
        return self.paths.submission(self.config.name)
