"""fastai's ``ImageClassifierCleaner`` on a trained fold: the learner it needs, and its choices saved as label-cleaning
decisions (``data/cleaning/<dataset>.csv``) that the folds stage applies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..data.cleaning import record_decisions
from ..data.folds import training_table
from ..errors import UserError
from ..experiment import load_learner_quietly
from ..metrics import GRADES


def cleaner_learner(experiment, fold: int = 0):
    """Fold ``fold``'s exported classifier with dataloaders over the preprocessed image files (train: the other
    folds, valid: this one), ready for fastai's ``ImageClassifierCleaner``, which shows images by file name."""
    from fastai.vision.all import CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Normalize

    if not experiment.head.categorical_targets:
        raise UserError(f"ImageClassifierCleaner needs a classification head; this experiment's is "
                        f"{experiment.config.head}")
    learn = load_learner_quietly(experiment.fold_files(fold).export)
    table = training_table(experiment)
    grade_of = dict(zip(table["path"], table["grade"], strict=False))
    valid_idx = list(table.index[table["fold"] == fold])
    norm = [t for t in learn.dls.after_batch.fs if isinstance(t, Normalize)]
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=list(GRADES))),
                       get_y=lambda p: grade_of[str(p)], splitter=IndexSplitter(valid_idx), batch_tfms=norm)
    learn.dls = dblock.dataloaders(list(table["path"]), bs=32, num_workers=0)
    return learn


def save_cleaner(cleaner, path: Path) -> pd.DataFrame:
    """The choices made in an ``ImageClassifierCleaner`` (built on :func:`cleaner_learner`) as decisions: the
    shown files are preprocessed images named ``<id>.png``."""
    drops = [Path(cleaner.fns[i]).stem for i in cleaner.delete()]
    relabels = {Path(cleaner.fns[i]).stem: int(label) for i, label in cleaner.change()}
    return record_decisions(path, drops, relabels)
