"""Grading a whole competition folder from a bundle of trained folds, with no network and no pipeline state: what
the Kaggle kernel of a code competition runs (``retinopathy kernel`` builds it), on whatever test ids it finds.

A bundle is an experiment's folder as training left it, copied: ``models/<exp>/fold<K>/`` (``export.pkl`` or the
ONNX files, ``config.yaml``, ``fingerprint.json``) and ``models/<exp>/tuning.json``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..competitions import detect_competition, read_test_ids
from ..errors import UserError
from ..experiment import Experiment
from ..paths import Paths
from ..preprocessing.image_io import examine_file
from ..preprocessing.stage import preprocess_dataset, ungradable_line
from .engines import get_engine
from .grader import Grader, models_in_folder
from .submission import TestPredictions, write_submission


def bundle_models(models_dir: Path, engine: str) -> list[Path]:
    """The model files, for ``engine``, of the one experiment under a bundle's ``models`` folder
    (``<exp>/fold<K>/<file>``, at any depth: an unpacked archive may add a level)."""
    name = get_engine(engine).model_file
    experiments = sorted({p.parent.parent for p in Path(models_dir).rglob(f"fold*/{name}")})
    if len(experiments) != 1:
        raise UserError(f"{models_dir}: expected the trained folds of one experiment with {name} "
                        f"files (the {engine} engine), found {len(experiments)} experiments")
    return models_in_folder(experiments[0], engine)


def predict_offline(models_dir: Path, competition_dir: Path, output_dir: Path, engine: str = "torch",
                    workers: int | None = None, device: str = "cpu", verbose: bool = True) -> Path:
    """Prepare every test image of ``competition_dir`` exactly as training did, grade it with every fold of the
    bundle's ``models_dir`` (TTA as configured), apply the tuning and write ``output_dir/submission.csv``, validated against the
    folder's sample submission. Works on whatever ids the sample submission lists."""
    competition_dir, output_dir = Path(competition_dir), Path(output_dir)
    start = time.time()
    grader = Grader(bundle_models(models_dir, engine), engine=engine, device=device)
    config = grader.config.replace(raw_dir=str(competition_dir))
    competition = detect_competition(competition_dir)
    sample_ids = read_test_ids(competition_dir, competition)
    if sample_ids is None:
        raise UserError(f"{competition_dir / competition.sample_submission} not found: the kernel needs the "
                        "competition's test set")
    experiment = Experiment(config, Paths(data=output_dir / "retinopathy-work", output=output_dir / "retinopathy-work"))
    manifest = preprocess_dataset(competition_dir, experiment.processed_dir, config.preprocess, config.image_size,
                                  workers=workers, progress=verbose, splits=("test",),
                                  hashed=False)  # no folds to keep copies together in
    readable = manifest[(manifest["path"] != "")]
    if verbose:
        print(f"prepared {len(readable)} of {len(sample_ids)} test images ({time.time() - start:.0f}s); grading "
              f"with {len(grader.runners)} fold(s), {engine} engine on {device}, TTA {'on' if grader.tta else 'off'}",
              flush=True)
        # Kaggle scores every row, so an ungradable photograph is graded all the same; the log says how many
        print(f"test images: {ungradable_line(manifest)} (each graded all the same: the submission needs every row)",
              flush=True)

    def progress(done, total):
        if verbose and (done == total or done % 1024 < 32):
            print(f"  graded {done}/{total} ({time.time() - start:.0f}s)", flush=True)

    outputs = grader.outputs_of_files(readable["path"].tolist(), progress=progress)
    ids = readable["id"].astype(str).tolist()
    predictions = TestPredictions(list(sample_ids), ids, outputs, len(grader.runners))
    grades = grader.grades(outputs, ids)
    return write_submission(experiment, predictions, grades, output_dir / "submission.csv", verbose,
                            fingerprints=sorted({c.fingerprint for c in grader.configs}))


def seconds_per_image(grader: Grader, images: list[Path]) -> float:
    """Measured wall time per test image of the kernel's work on this machine: decode, prepare, every fold."""
    if not images:
        raise UserError("no image to time the kernel with")
    start = time.perf_counter()
    grader.outputs(np.stack([examine_file(p, grader.method, grader.size).image for p in images]))
    return (time.perf_counter() - start) / len(images)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def describe_speed(per_image: float, n_images: int = 13_000, limit_hours: float = 9.0, gpu: str | None = None) -> str:
    """One line: the time per 1,000 images and for ``n_images``, against the kernel's run-time limit, for the machine
    class the kernel runs on (a CPU kernel, or ``gpu``, a Kaggle GPU machine, where only the CPU's share is
    measured here)."""
    total = per_image * n_images
    verdict = "fits" if total < limit_hours * 3600 else "does NOT fit"
    where = (f"on Kaggle's {gpu} the folds run on its GPU, so expect less; preprocessing stays on its CPU"
             if gpu else "a kernel's CPU differs: keep a margin, or use --gpu")
    return (f"{_duration(per_image * 1000)} per 1,000 images on this machine's CPU → about {_duration(total)} for "
            f"{n_images:,} test images ({verdict} Kaggle's {limit_hours:.0f} h limit; {where})")
