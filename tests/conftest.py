import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Under pytest-xdist (`make test` runs one worker per core) each worker and the scripts it starts compute on one
# thread: two workers of two threads each on two cores only fight over them. Set before anything imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

from retinopathy.data.synthetic import make_competition

from runtimes import runtime_without_library  # noqa: F401 - a helper the tests import from here

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared(name: str) -> Path:
    """A folder of the real data beside the checkout; the test is skipped where it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (it sits beside the checkout on developer machines and in CI)")
    return path


def run_script(name: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run one of scripts/ as a user would, in ``cwd``."""
    merged = {**os.environ, **(env or {})}
    merged = {k: v for k, v in merged.items() if v is not None}  # None in ``env`` unsets a variable
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args], cwd=cwd, capture_output=True,
                          text=True, env=merged, timeout=600)


@pytest.fixture(scope="session")
def tiny_aptos(tmp_path_factory) -> Path:
    """A 40-image synthetic APTOS competition (10 test images), small images."""
    return make_competition(tmp_path_factory.mktemp("raw") / "tiny-aptos", "aptos2019", n_train=40, n_test=10,
                            seed=1, max_side=160, workers=1, progress=False)


@pytest.fixture(scope="session")
def tiny_eyepacs(tmp_path_factory) -> Path:
    return make_competition(tmp_path_factory.mktemp("raw") / "tiny-eyepacs", "eyepacs2015", n_train=30, n_test=10,
                            seed=2, max_side=200, workers=1, progress=False)


#: the cheapest run (one epoch at 32 px on two folds): the shipped preset, not a copy of it
DEBUG_CONFIG = REPO / "configs" / "debug.yaml"


def debug_config(raw: Path, name: str, *overrides: str):
    """``configs/debug.yaml`` on the competition folder ``raw``, named ``name``, with ``overrides``."""
    from retinopathy.config import load_config

    return load_config(DEBUG_CONFIG, [f"raw_dir={raw}", f"name={name}", "synthetic_images=0", *overrides])


def tiny_pipeline(raw: Path, work: Path, name: str, *overrides: str, folds=None):
    """Run the whole pipeline on ``raw`` with outputs under ``work``; returns (experiment, result)."""
    from retinopathy.experiment import Experiment
    from retinopathy.paths import Paths
    from retinopathy.pipeline import run_pipeline

    config = debug_config(raw, name, *overrides)
    paths = Paths.default(data_dir=work / "data", output_dir=work)
    only = tuple(folds) if folds is not None else None
    return Experiment(config, paths, only), run_pipeline(config, paths, folds=folds)


def child_processes(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (from /proc)."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie or a dead one does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def trained_in(raw: Path, work: Path, name: str):
    """A tiny experiment trained by the pipeline in ``work``, and the environment a user's shell needs to reach it:
    (experiment, work, env)."""
    experiment, _ = tiny_pipeline(raw, work, name)
    return experiment, work, {"RETINOPATHY_OUTPUT_DIR": str(work), "RETINOPATHY_DATA_DIR": str(work / "data")}


@contextlib.contextmanager
def headless_chromium(width: int = 1300, height: int = 1000):
    """A Selenium driver of Debian's chromium, headless (skips where chromium or its driver is not installed)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
