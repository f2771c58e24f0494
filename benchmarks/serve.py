"""Grader latency and throughput: a real uvicorn server (scripts/serve.py, one inference thread) and a client in
this separate process on loopback, posting a real full-resolution EyePACS photograph.

For each model, the four engines side by side in one run (PyTorch float32, PyTorch bfloat16 + channels-last, ONNX
Runtime float32, ONNX Runtime int8; the ONNX files come from the export step, scripts/export_onnx.py):
  latency      50 sequential requests after a warm-up: p50 and p95 of the round trip, and the server's own ms
  throughput   200 requests from 20 concurrent clients: requests per second, errors
  model only   the network alone on one prepared image, one thread (torch.compile too), to show where time goes
  explain      10 requests with ?explain=1 (the Grad-CAM overlay, torch engines only): p50, and its cost over the
               plain request (the overlay for one image on one core)

Models: the demo's fold 0 (models/demo/fold0/export.pkl; `make demo` makes it) and a resnet34 at 256 px (built
here with random weights: speed does not depend on the weights; how much int8 changes a trained model's grades is
what the export step measures on real validation images). Each engine's answer on the photograph is printed
beside float32's.

  python benchmarks/serve.py
  python benchmarks/serve.py --requests 20 --skip-demo --engines torch int8

Goal (issue #8): p50 at most 60 ms for resnet34 at 256 px on one core.
"""

import argparse
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "serve"
PHOTO_DIR = REPO.parent / "shared" / "data" / "eyepacs-sample" / "train"


ENGINE_NAMES = {"torch": "PyTorch float32", "bf16": "PyTorch bf16 + channels-last", "onnx": "ONNX Runtime float32",
                "int8": "ONNX Runtime int8"}


def build_resnet34_256():
    """An exported resnet34 learner at 256 px (untrained), with its config beside it, as training leaves it; and
    its experiment."""
    from retinopathy.config import load_config
    from retinopathy.data.folds import make_folds, training_table
    from retinopathy.experiment import Experiment, write_provenance
    from retinopathy.paths import Paths
    from retinopathy.pipeline import ensure_raw_data
    from retinopathy.preprocessing.stage import preprocess
    from retinopathy.training.dataloaders import build_dataloaders
    from retinopathy.training.models import build_learner

    config = load_config(REPO / "configs" / "demo.yaml", ["name=resnet34-256", "arch=resnet34", "image_size=256",
                                                           "synthetic_images=40", "n_folds=2", "num_workers=0",
                                                           "dataset=serve-bench"])
    experiment = Experiment(config, Paths(data=OUT / "data", output=OUT))
    export = experiment.fold_dir(0) / "export.pkl"
    if export.is_file():
        return export, experiment
    ensure_raw_data(experiment)
    preprocess(experiment, workers=1)
    make_folds(experiment, verbose=False)
    learn = build_learner(build_dataloaders(training_table(experiment), experiment, 0), experiment,
                          experiment.fold_dir(0))
    experiment.fold_dir(0).mkdir(parents=True, exist_ok=True)
    learn.export(export)
    write_provenance(experiment.fold_dir(0), config)
    config.save(experiment.fold_dir(0) / "config.yaml")
    return export, experiment


def demo_experiment():
    from retinopathy.inference.ensemble import load_experiment
    from retinopathy.paths import Paths
    return load_experiment("demo", Paths.default(data_dir=REPO / "data", output_dir=REPO))


def model_only(export: Path, config, onnx_files: dict, n: int = 30) -> dict:
    """Milliseconds per image for the network alone (one thread, prepared input), engine by engine."""
    import torch

    from retinopathy.experiment import load_learner_quietly
    from retinopathy.inference.engines import OnnxRunner
    from retinopathy.training.serving_model import TorchRunner, serving_model

    torch.set_num_threads(1)
    size = config.image_size
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)

    def fresh():
        return serving_model(load_learner_quietly(export), config.head)

    compiled = TorchRunner(fresh())
    compiled.model = torch.compile(compiled.model)
    runners = {"torch": TorchRunner(fresh()), "torch.compile": compiled, "bf16": TorchRunner(fresh(), bf16=True)}
    runners.update({engine: OnnxRunner(path, threads=1) for engine, path in onnx_files.items()})
    out = {}
    for name, run in runners.items():
        for _ in range(5):
            run(image)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            run(image)
            times.append((time.perf_counter() - start) * 1000)
        out[name] = statistics.median(times)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model: Path, photo: bytes, engine: str, n: int, clients: int, total: int) -> dict:
    port = free_port()
    cmd = [sys.executable, str(REPO / "scripts" / "serve.py"), "--model", str(model), "--port", str(port),
           "--threads", "1", "--engine", engine]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"server did not start: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.3)
        files = {"file": ("photo.jpeg", photo, "image/jpeg")}
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(5):
                client.post("/predict", files=files)
            round_trips, server_ms, answers = [], [], []
            for _ in range(n):
                start = time.perf_counter()
                body = client.post("/predict", files=files).json()
                round_trips.append((time.perf_counter() - start) * 1000)
                server_ms.append(body["ms"])
                answers.append(body["probabilities"] or [body["value"]])
            explained = []
            for _ in range(10 if engine in ("torch", "bf16") else 0):
                start = time.perf_counter()
                body = client.post("/predict?explain=1", files=files).json()
                assert body["explanation"], body
                explained.append((time.perf_counter() - start) * 1000)

        def session(k):
            with httpx.Client(base_url=url, timeout=120) as c:
                return [c.post("/predict", files=files).status_code for _ in range(k)]

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            statuses = [s for batch in pool.map(session, [total // clients] * clients) for s in batch]
        elapsed = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    q = statistics.quantiles(round_trips, n=20)
    return {"p50": statistics.median(round_trips), "p95": q[18], "server_p50": statistics.median(server_ms),
            "rps": len(statuses) / elapsed, "errors": sum(s != 200 for s in statuses), "answer": answers[0],
            "explain_p50": statistics.median(explained) if explained else None}


def main() -> None:
    from retinopathy.inference.engines import ENGINES
    from retinopathy.inference.export import export_fold, onnx_files

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photo", type=Path, default=None, help="a fundus photograph (default: a real EyePACS one)")
    p.add_argument("--requests", type=int, default=50, help="sequential requests for the latency figures")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--total", type=int, default=200, help="requests in the concurrent run")
    p.add_argument("--skip-demo", action="store_true", help="only the resnet34 at 256 px")
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    args = p.parse_args()
    photo_path = args.photo or sorted(PHOTO_DIR.glob("*.jpeg"))[0]
    photo = photo_path.read_bytes()
    models = {}
    demo = REPO / "models" / "demo" / "fold0" / "export.pkl"
    if not args.skip_demo:
        if demo.is_file():
            models["demo (resnet18, 64 px)"] = (demo, demo_experiment())
        else:
            print(f"{demo} not found: run `make demo` first to include the demo model")
    models["resnet34, 256 px"] = build_resnet34_256()
    print(f"photo: {photo_path.name} ({len(photo) / 2**20:.1f} MB); server: 1 inference thread; client: this process")
    rows, model_rows, explain_rows = [], [], []
    for name, (path, experiment) in models.items():
        if {"onnx", "int8"} & set(args.engines):
            export_fold(experiment, 0, verbose=False)  # skipped when up to date
        results = {}
        for engine in args.engines:
            r = results[engine] = measure(path, photo, engine, args.requests, args.clients, args.total)
            rows.append(f"| {name} | {ENGINE_NAMES[engine]} | {r['p50']:.1f} | {r['p95']:.1f} | "
                        f"{r['server_p50']:.1f} | {r['rps']:.1f} | {r['errors']} |")
            print(rows[-1], flush=True)
            if r["explain_p50"] is not None:
                explain_rows.append(f"| {name} | {ENGINE_NAMES[engine]} | {r['p50']:.1f} | {r['explain_p50']:.1f} | "
                                    f"{r['explain_p50'] - r['p50']:.1f} |")
        base = results[args.engines[0]]
        for engine, r in results.items():
            print(f"  {name}, {engine}: {[round(x, 3) for x in r['answer']]}; p50 {base['p50'] / r['p50']:.2f}x "
                  f"faster than {args.engines[0]}")
        onnx = {e: f for e, f in onnx_files(path.parent).items() if e in args.engines}
        ms = model_only(path, experiment.config, onnx)
        model_rows.append(f"| {name} | " + " | ".join(f"{ms[k]:.1f}" if k in ms else "–" for k in
                                                     ("torch", "torch.compile", "bf16", "onnx", "int8")) + " |")
        print(model_rows[-1], flush=True)
    print("\n| model | engine | p50 ms | p95 ms | server p50 ms | req/s (20 clients) | errors |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nThe network alone, one thread, ms per image (median):")
    print("\n| model | PyTorch float32 | torch.compile | bf16 + channels-last | ONNX Runtime float32 "
          "| ONNX Runtime int8 |")
    print("|---|---|---|---|---|---|")
    print("\n".join(model_rows))
    if explain_rows:
        print("\nThe Grad-CAM overlay (POST /predict?explain=1), one inference thread:")
        print("\n| model | engine | plain p50 ms | explain p50 ms | the overlay's cost, ms |")
        print("|---|---|---|---|---|")
        print("\n".join(explain_rows))


if __name__ == "__main__":
    main()
