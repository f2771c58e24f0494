"""The torch-free server: a fresh environment with only ``pip install ".[serve]"`` (no torch, no fastai) serves
an experiment's ONNX files with several worker processes and grades a real photograph. Slow (a real install):
CI runs it as its own step, ``make test-serve``."""

import json
import subprocess
import sys
import time

import httpx
import pytest
from test_serve import children, post, start_server

from conftest import REPO, run_script, shared, tiny_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_only(tmp_path_factory):
    """A fresh virtual environment holding the library with its serve extra and nothing else."""
    venv = tmp_path_factory.mktemp("serve-only") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    start = time.time()
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{REPO}[serve]"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"pip install .[serve]: {time.time() - start:.0f}s")
    return venv


def test_serve_extra_alone_serves_onnx_with_workers(serve_only, tiny_aptos, tmp_path):
    python = serve_only / "bin" / "python"
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    for absent in ("fastai", "torchvision", "timm"):
        assert subprocess.run([str(python), "-c", f"import {absent}"], capture_output=True).returncode != 0
    experiment, _ = tiny_pipeline(tiny_aptos, tmp_path, "served-onnx")
    env = {"RETINOPATHY_OUTPUT_DIR": str(experiment.paths.output), "RETINOPATHY_DATA_DIR": str(experiment.paths.data)}
    exported = run_script("export_onnx.py", "--config", str(experiment.dir / "config.yaml"), "--calibration-images",
                          "12", cwd=REPO, env=env)
    assert exported.returncode == 0, exported.stderr
    start = time.time()
    proc, url = start_server([str(serve_only / "bin" / "retinopathy"), "serve", "--models-dir", str(experiment.dir),
                              "--engine", "onnx", "--workers", "2"])
    try:
        print(f"torch-free server up in {time.time() - start:.1f}s")
        assert len(children(proc.pid)) >= 2
        client = httpx.Client(base_url=url, timeout=30)
        photo = sorted((shared("eyepacs-sample") / "train").glob("*.jpeg"))[0]
        answer = post(client, photo.read_bytes(), photo.name)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["grade"] in range(5) and "onnx" in body["model_id"]
        assert json.loads(client.get("/health").text)["models"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def docker_engine() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_the_container_image_serves_a_mounted_experiment(tiny_aptos, tmp_path):
    if not docker_engine():
        pytest.skip("no Docker engine on this machine (only the client, or nothing): the image was not built here")
    experiment, _ = tiny_pipeline(tiny_aptos, tmp_path, "served-docker")
    env = {"RETINOPATHY_OUTPUT_DIR": str(experiment.paths.output), "RETINOPATHY_DATA_DIR": str(experiment.paths.data)}
    assert run_script("export_onnx.py", "--config", str(experiment.dir / "config.yaml"), "--calibration-images",
                      "12", cwd=REPO, env=env).returncode == 0
    built = subprocess.run(["docker", "build", "-q", "-t", "retinopathy-serve-test", str(REPO)], capture_output=True,
                           text=True, timeout=1200)
    assert built.returncode == 0, built.stderr[-3000:]
    name = "retinopathy-serve-test"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    run = subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8000", "-v",
                          f"{experiment.dir}:/models:ro", "retinopathy-serve-test"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    try:
        port = subprocess.run(["docker", "port", name, "8000"], capture_output=True, text=True).stdout.split(":")[-1]
        url = f"http://127.0.0.1:{port.strip()}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        photo = sorted((tiny_aptos / "test_images").glob("*.png"))[0]
        answer = post(httpx.Client(base_url=url, timeout=30), photo.read_bytes(), photo.name)
        assert answer.status_code == 200 and answer.json()["grade"] in range(5)
        user = subprocess.run(["docker", "exec", name, "id", "-u"], capture_output=True, text=True).stdout.strip()
        assert user != "0", "the server runs as a non-root user"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
