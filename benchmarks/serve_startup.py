"""A server's start-up time (process start to the first 200 on /health) and its p50 / p95 latency over 50 posts of
a real full-resolution EyePACS photograph, one inference thread; for any environment's `retinopathy` command, so
the torch-free `.[serve]` environment and the full one are measured the same way.

  python benchmarks/serve_startup.py --venv /path/to/serve-venv --models-dir models/demo --engine int8
  python benchmarks/serve_startup.py --venv .venv --models-dir models/demo --engine torch
"""

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PHOTO_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eyepacs-sample" / "train"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venv", type=Path, default=Path(sys.executable).parents[1], help="the environment to serve from")
    p.add_argument("--models-dir", required=True, help="an experiment's folder, models/<exp>")
    p.add_argument("--engine", default="int8")
    p.add_argument("--requests", type=int, default=50)
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    photo = sorted(PHOTO_DIR.glob("*.jpeg"))[0].read_bytes()
    start = time.perf_counter()
    proc = subprocess.Popen([str(args.venv / "bin" / "retinopathy"), "serve", "--models-dir", args.models_dir,
                             "--engine", args.engine, "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
            if proc.poll() is not None:
                sys.exit(proc.stderr.read().decode())
        up = time.perf_counter() - start
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(5):
                client.post("/predict", files={"file": ("photo.jpeg", photo)})
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                assert client.post("/predict", files={"file": ("photo.jpeg", photo)}).status_code == 200
                times.append((time.perf_counter() - t) * 1000)
    finally:
        proc.terminate()
        proc.wait()
    print(f"{args.venv}: start-up to /health {up:.2f} s; p50 {statistics.median(times):.1f} ms, p95 "
          f"{statistics.quantiles(times, n=20)[18]:.1f} ms ({args.engine}, 1 inference thread, {args.models_dir})")


if __name__ == "__main__":
    main()
