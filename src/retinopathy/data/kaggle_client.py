"""The official Kaggle client, imported lazily and with its failures turned into one line each.

``import kaggle`` authenticates at import time and prints a page of help when it cannot; neither should happen
when a script merely starts, so the client is imported only inside :func:`kaggle_api`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

from ..errors import UserError

CREDENTIALS_HELP = ("set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or put kaggle.json in ~/.kaggle/ "
                    "(kaggle.com → Settings → API → Create New Token)")


def rules_url(competition: str) -> str:
    """The page where a competition's rules are accepted."""
    return f"https://www.kaggle.com/competitions/{competition}/rules"


def kaggle_api():
    """An authenticated ``KaggleApi``; missing credentials are a :class:`UserError`, not the client's exit."""
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi
            api = KaggleApi()
            api.authenticate()
    except SystemExit:
        raise UserError(f"no Kaggle credentials found: {CREDENTIALS_HELP}") from None
    except ImportError as e:
        raise UserError(f"the kaggle client is not installed ({e}): pip install kaggle") from None
    return api


@contextlib.contextmanager
def kaggle_errors(competition: str, what: str = "", not_found: str | None = None) -> Iterator[None]:
    """Turn the client's HTTP and network failures (and its ValueErrors about bad metadata or a denied kernel) into
    one clear sentence naming the fix; ``not_found`` is the advice for a 404."""
    import requests

    try:
        yield
    except ValueError as e:  # the client's own checks: metadata, slugs, a kernel it may not read
        raise UserError(f"Kaggle client refused {competition}{f' ({what})' if what else ''}: "
                        f"{str(e).splitlines()[0][:300]}") from None
    except requests.exceptions.HTTPError as e:
        status = e.response.status_code if e.response is not None else None
        target = f"{competition}{f' ({what})' if what else ''}"
        if status == 401:
            raise UserError(f"Kaggle refused the credentials (401 Unauthorized): the key is wrong or expired; "
                            f"{CREDENTIALS_HELP}") from None
        if status == 403:
            raise UserError(f"Kaggle says 403 Forbidden for {target}: accept the competition's rules first at "
                            f"{rules_url(competition)} (logged in as the key's owner), then run this again") from None
        if status == 404:
            raise UserError(f"Kaggle says 404 Not Found for {target}: " + (not_found or (
                "check the name (e.g. aptos2019-blindness-detection, diabetic-retinopathy-detection, or the file "
                "names that retinopathy download --list shows)"))) from None
        raise UserError(f"Kaggle answered {status or 'an error'} for {target}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise UserError(f"cannot reach Kaggle ({type(e).__name__}): check the network connection (and any proxy "
                        "settings), then run this again; finished files are kept") from None


def submit(path, message: str, competition: str, poll_seconds: float = 10.0, timeout: float = 1800.0,
           echo=print) -> dict:
    """Upload a submission with ``competition_submit``, then wait for its score (:func:`wait_for_score`)."""
    api = kaggle_api()
    with kaggle_errors(competition):
        response = api.competition_submit(str(path), message, competition, quiet=True)
    ref = getattr(response, "ref", None)
    text = getattr(response, "message", "") or ""
    if not ref:
        raise UserError(f"Kaggle did not accept the submission: {text or 'no reason given'}")
    echo(f"submitted {path} to {competition} (ref {ref}): {text}")
    return wait_for_score(api, competition, ref, text, poll_seconds, timeout, echo)


def wait_for_score(api, competition: str, ref, text: str = "", poll_seconds: float = 10.0, timeout: float = 1800.0,
                   echo=print) -> dict:
    """Poll ``competition_submissions`` until Kaggle has scored submission ``ref`` (or ``timeout`` passes).
    Returns {"ref", "status", "public_score", "message"}."""
    import time

    deadline = time.time() + timeout
    status = "PENDING"
    while True:
        with kaggle_errors(competition, "listing submissions"):
            mine = [s for s in (api.competition_submissions(competition) or []) if s is not None and s.ref == ref]
        if mine:
            status = getattr(mine[0].status, "name", str(mine[0].status)).upper()
            if status.endswith("COMPLETE"):
                return {"ref": ref, "status": "COMPLETE", "public_score": mine[0].public_score, "message": text}
            if status.endswith("ERROR"):
                reason = getattr(mine[0], "error_description", "") or "no reason given"
                raise UserError(f"Kaggle could not score submission {ref}: {reason}")
        if time.time() > deadline:
            echo(f"still {status.lower()} after {timeout:.0f}s; see https://www.kaggle.com/competitions/"
                 f"{competition}/submissions")
            return {"ref": ref, "status": status, "public_score": None, "message": text}
        echo(f"scoring… (status {status.lower()}, next check in {poll_seconds:.0f}s)")
        time.sleep(poll_seconds)
