"""Gradability's thresholds against the real photographs and degraded copies of them, side by side: for each
measurement, the real photographs' lowest (or highest) values beside the degraded copies', and how many of each
the shipped thresholds call ungradable.

  python benchmarks/quality.py [--every 1]      # every shared APTOS photograph (2,929) and the 10 EyePACS ones

Degraded copies of every 10th photograph: blurred (Gaussian, sigma 1/60 of the side), darkened to a tenth, burnt
out (x4 + 100), clouded (the retina's detail flattened to a twentieth, as behind a dense cataract).
"""

import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from retinopathy.preprocessing.image_io import decode_for_examining, examine_image

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def haze(photo):
    out = photo.astype(np.float32)
    lit = photo.max(axis=2) > 8
    mean = out[lit].mean(axis=0)
    out[lit] = (out[lit] - mean) * 0.05 + mean
    return out.astype(np.uint8)


DEGRADE = {"blurred": lambda p: cv2.GaussianBlur(p, (0, 0), p.shape[0] / 60),
           "dark": lambda p: (p * 0.1).astype(np.uint8),
           "burnt": lambda p: np.clip(p.astype(np.float32) * 4 + 100, 0, 255).astype(np.uint8),
           "clouded": haze}


def measure(job):
    path, degrade = job
    img = decode_for_examining(path, 32)[0]
    rows = [("real", img)] + ([(k, f(img)) for k, f in DEGRADE.items()] if degrade else [])
    out = []
    for kind, picture in rows:
        q = examine_image(picture, "crop", 32).quality
        out.append({"file": Path(path).name, "kind": kind, **q.record()})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", type=int, default=1, help="take every n-th APTOS photograph")
    args = p.parse_args()
    files = sorted((SHARED / "aptos2019-224" / "train_images").glob("*.png"))[::args.every]
    files += sorted((SHARED / "eyepacs-sample" / "train").glob("*.jpeg"))
    jobs = [(str(f), i % 10 == 0) for i, f in enumerate(files)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        table = pd.DataFrame([row for rows in pool.map(measure, jobs, chunksize=16) for row in rows])
    table.to_csv(Path(__file__).with_name("out") / "quality.csv", index=False) if Path(__file__).with_name(
        "out").is_dir() else None
    print(f"{(table['kind'] == 'real').sum()} real photographs, {(table['kind'] != 'real').sum()} degraded copies\n")
    print("| kind | images | ungradable | reasons | brightness min / max | contrast min | focus min |")
    print("| --- | ---: | ---: | --- | --- | --- | --- |")
    for kind, rows in table.groupby("kind", sort=False):
        reasons = rows.loc[~rows["gradable"], "ungradable_reason"].value_counts()
        print(f"| {kind} | {len(rows)} | {int((~rows['gradable']).sum())} | "
              f"{', '.join(f'{r}: {n}' for r, n in reasons.items()) or '-'} | "
              f"{rows['brightness'].min():.0f} / {rows['brightness'].max():.0f} | {rows['contrast'].min():.2f} | "
              f"{rows['focus'].min():.3f} |")
    real = table[table["kind"] == "real"]
    print("\nreal photographs, percentiles 0.1 / 1 / 50: focus "
          + " / ".join(f"{v:.3f}" for v in np.nanpercentile(real["focus"], [0.1, 1, 50]))
          + "; contrast " + " / ".join(f"{v:.2f}" for v in np.nanpercentile(real["contrast"], [0.1, 1, 50]))
          + "; blurred copies' focus, percentiles 50 / 99: "
          + " / ".join(f"{v:.3f}" for v in np.nanpercentile(table.loc[table["kind"] == "blurred", "focus"], [50, 99])))
    print("ungradable real photographs:", ", ".join(f"{r.file} ({r.ungradable_reason})"
                                                    for r in real[~real["gradable"]].itertuples()) or "none")


if __name__ == "__main__":
    main()
