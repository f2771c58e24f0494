"""Sending a built kernel to Kaggle with the official client: the dataset (created, or a new version), the kernel
(pushed, then watched until it ends), its output (fetched and validated), and the code submission (scored)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..competitions import Competition
from ..data.kaggle_client import kaggle_api, kaggle_errors, wait_for_score
from ..errors import UserError
from ..inference.submission import validate_submission
from .build import KernelBuild

#: the states after which a kernel session does nothing more
KERNEL_ENDED = ("COMPLETE", "ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")
#: the states after which Kaggle does nothing more with an uploaded dataset version
DATASET_ENDED = ("READY", "FAILED", "DELETED")


def _status_name(status) -> str:
    return getattr(status, "name", str(status)).upper().rpartition(".")[2]


def _wait(what: str, check, ended: tuple[str, ...], poll: float, timeout: float, echo) -> str:
    """Call ``check`` (→ status name) every ``poll`` seconds until it names one of the ``ended`` states; one
    progress line per check."""
    start = time.time()
    while True:
        status = check()
        if status in ended:
            return status
        if time.time() - start > timeout:
            raise UserError(f"{what} still {status.lower()} after {timeout:.0f}s: check it on kaggle.com, or run "
                            "again with a longer --timeout")
        echo(f"{what}: {status.lower()} ({time.time() - start:.0f}s, next check in {poll:.0f}s)")
        time.sleep(poll)


def upload_dataset(api, build: KernelBuild, notes: str, poll: float, timeout: float, echo=print) -> str:
    """Create the dataset, or a new version where it exists; wait until Kaggle has processed it. Returns
    "created" or "new version"."""
    import requests

    ref = build.dataset
    with kaggle_errors(ref, "dataset"):
        try:
            api.dataset_status(ref)
            exists = True
        except requests.exceptions.HTTPError as e:
            if getattr(e.response, "status_code", None) != 404:  # a new dataset answers 404; anything else is said
                raise
            exists = False
    with kaggle_errors(ref, "dataset upload"):  # folders (wheels/, models/) travel as zip archives
        if exists:
            response = api.dataset_create_version(str(build.dataset_dir), notes, quiet=True, dir_mode="zip")
        else:
            response = api.dataset_create_new(str(build.dataset_dir), public=False, quiet=True, dir_mode="zip")
    error = getattr(response, "error", None)
    if error:
        raise UserError(f"Kaggle refused the dataset {ref}: {error}")
    action = "new version" if exists else "created"
    echo(f"dataset {ref}: {action}")

    def check():
        with kaggle_errors(ref, "dataset status"):
            return _status_name(api.dataset_status(ref))

    status = _wait(f"dataset {ref}", check, DATASET_ENDED, poll, timeout, echo)
    if status != "READY":
        raise UserError(f"Kaggle could not process the dataset {ref} (status {status.lower()}): see "
                        f"https://www.kaggle.com/datasets/{ref}")
    return action


def push_kernel(api, build: KernelBuild, echo=print) -> int:
    """Push the kernel (Kaggle runs it at once); returns its new version number."""
    with kaggle_errors(build.kernel, "kernel push",
                       not_found="check --kernel's owner (your Kaggle username) and that the dataset and "
                                 "competition it names exist"):
        response = api.kernels_push(str(build.kernel_dir))
    error = getattr(response, "error", None)
    if error:
        raise UserError(f"Kaggle refused the kernel {build.kernel}: {error}")
    invalid = [s for key in ("invalid_dataset_sources", "invalid_competition_sources")
               for s in (getattr(response, key, None) or [])]
    if invalid:
        raise UserError(f"Kaggle refused the kernel {build.kernel}'s sources {', '.join(invalid)}: check that they "
                        "exist and that you accepted the competition's rules")
    version = getattr(response, "version_number", None)
    echo(f"kernel {build.kernel}: version {version} pushed → {getattr(response, 'url', '') or build.kernel}")
    return int(version or 0)


def wait_for_kernel(api, kernel: str, poll: float, timeout: float, echo=print) -> None:
    """Poll the kernel's session until it ends; an error is one line with Kaggle's failure message."""
    failure = {}

    def check():
        with kaggle_errors(kernel, "kernel status"):
            response = api.kernels_status(kernel)
        failure["message"] = getattr(response, "failure_message", "") or ""
        return _status_name(response.status)

    status = _wait(f"kernel {kernel}", check, KERNEL_ENDED, poll, timeout, echo)
    if status != "COMPLETE":
        message = " ".join(failure["message"].split())[:300] or "no message"
        raise UserError(f"kernel {kernel} ended with {status.lower()}: {message} (its log: "
                        f"https://www.kaggle.com/code/{kernel}/log)")
    echo(f"kernel {kernel}: complete")


def fetch_output(api, kernel: str, dest: Path, competition: Competition, sample_ids: list[str] | None,
                 echo=print) -> Path | None:
    """Download the kernel's output into ``dest`` and validate its submission.csv (against the local sample
    submission, when there is one). Returns the submission's path (None where the kernel wrote none)."""
    dest.mkdir(parents=True, exist_ok=True)
    with kaggle_errors(kernel, "kernel output"):
        api.kernels_output(kernel, str(dest), force=True, quiet=True)
    path = dest / "submission.csv"
    if not path.is_file():
        echo(f"kernel {kernel}: no submission.csv in its output ({dest})")
        return None
    if sample_ids is not None:
        table = pd.read_csv(path, dtype={competition.id_column: str}, keep_default_na=False)
        validate_submission(table, sample_ids, competition, str(path))
        echo(f"kernel output: {path} valid ({len(table)} rows)")
    else:
        echo(f"kernel output: {path}")
    return path


def submit_kernel(api, build: KernelBuild, competition: Competition, version: int, message: str, poll: float,
                  timeout: float, echo=print) -> dict:
    """Submit the pushed kernel version to the code competition and wait for its score."""
    with kaggle_errors(competition.slug, "code submission"):
        response = api.competition_submit_code("submission.csv", message, competition.slug, kernel=build.kernel,
                                               kernel_version=version, quiet=True)
    ref = getattr(response, "ref", None)
    text = getattr(response, "message", "") or ""
    if not ref:
        raise UserError(f"Kaggle did not accept the code submission: {text or 'no reason given'}")
    echo(f"submitted kernel {build.kernel} version {version} to {competition.slug} (ref {ref}): {text}")
    return wait_for_score(api, competition.slug, ref, text, poll, timeout, echo)


def push(build: KernelBuild, competition: Competition, sample_ids: list[str] | None, output_dir: Path,
         message: str | None, poll: float = 30.0, timeout: float = 9 * 3600, echo=print) -> dict:
    """Dataset, kernel, its run and output, and (with ``message``) the code submission. Returns what happened."""
    api = kaggle_api()
    upload_dataset(api, build, message or "retinopathy kernel build", poll, timeout, echo)
    version = push_kernel(api, build, echo)
    wait_for_kernel(api, build.kernel, poll, timeout, echo)
    submission = fetch_output(api, build.kernel, output_dir, competition, sample_ids, echo)
    result = {"version": version, "submission": submission}
    if message:
        result["score"] = submit_kernel(api, build, competition, version, message, poll, timeout, echo)
    return result
