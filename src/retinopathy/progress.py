"""Progress on long work, as a person at a terminal wants it and a log file does not."""

from __future__ import annotations


def progress_bar(iterable=None, show: bool = True, **options):
    """tqdm's bar where the output is a terminal; none in a log file or CI, where its carriage-return redraws
    would leave fragments (the stages print a line when they finish)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if show else True, **options)


def steps(prefix: str, total: int, show: bool = True):
    """``step(what)`` prints ``<prefix> [i/total] what`` at the start of each step of a long piece of work,
    flushed at once (a log file sees it too); nothing with ``show`` false."""
    done = [0]

    def step(what: str) -> None:
        done[0] += 1
        if show:
            print(f"{prefix} [{done[0]}/{total}] {what}", flush=True)
    return step
