"""Progress on long work, as a person at a terminal wants it and a log file does not."""

from __future__ import annotations


def progress_bar(iterable=None, show: bool = True, **options):
    """tqdm's bar where the output is a terminal; none in a log file or CI, where its carriage-return redraws
    would leave fragments (the stages print a line when they finish)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if show else True, **options)
