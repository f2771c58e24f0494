"""`make test-oldest`: in an environment where the oldest supported torch stack was installed first and the
project after it, check that the install kept those releases, then run the tiny pipeline end to end.

  python tests/oldest_stack.py torch==2.9.1 torchvision==0.24.1 fastai==2.8.5 timm==1.0.3
"""

import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path


def main(pins: list[str]) -> None:
    changed = [f"{pin} became {version(pin.split('==')[0])}" for pin in pins
               if version(pin.split("==")[0]) != pin.split("==")[1]]
    if changed:
        sys.exit("the project's install replaced the preinstalled stack: " + "; ".join(changed))
    command = Path(sys.executable).parent / "retinopathy"
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run([str(command), "pipeline", "--config", "debug"], cwd=work, text=True,
                              capture_output=True)
        if done.returncode != 0:
            sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
        submission = Path(work, "submissions", "debug.csv")
        if not submission.is_file():
            sys.exit("the pipeline wrote no submission")
    print(f"oldest stack ({' '.join(pins)}): kept by the install, tiny pipeline passed → {submission.name}")


if __name__ == "__main__":
    main(sys.argv[1:])
