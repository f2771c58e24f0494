"""Several processes on one fold through torchrun and fastai's distributed context, proven on CPU with gloo."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("loader", ["png", "store"])
def test_two_cpu_processes_train_one_fold(tiny_aptos, tmp_path, loader):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    env = {**os.environ, "RETINOPATHY_OUTPUT_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    common = ["--config", str(REPO / "configs" / "debug.yaml"), "--data-dir", str(tmp_path / "data"),
              "--raw-dir", str(tiny_aptos)]
    overrides = ["epochs=2", "batch_size=8", "name=ddp", f"loader={loader}",
                 *(["augment_on=batch"] if loader == "store" else [])]
    for stage in ("preprocess.py", "folds.py"):
        done = subprocess.run([sys.executable, str(REPO / "scripts" / stage), *common, *overrides], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(REPO / "scripts" / "train_fold.py"),
                          *common, "--fold", "0", *overrides], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    fold_dir = tmp_path / "models" / "ddp" / "fold0"
    history = pd.read_csv(fold_dir / "history.csv")
    assert len(history) == 2 and history["qwk"].notna().all(), "process 0 logged both epochs once"
    oof = pd.read_csv(fold_dir / "oof.csv")
    assert len(oof) == 20, "out-of-fold predictions cover the whole validation fold, not one process's share"
    assert (fold_dir / "export.pkl").is_file()
    assert run.stdout.count("fold 0: QWK") == 1, "only process 0 reports"
