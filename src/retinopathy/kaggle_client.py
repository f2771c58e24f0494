"""The official Kaggle client, imported lazily and with its failures turned into one line each.

``import kaggle`` authenticates at import time and prints a page of help when it cannot; neither should happen
when a script merely starts, so the client is imported only inside :func:`kaggle_api`.
"""

from __future__ import annotations

import contextlib
import io
from typing import Iterator

from .errors import UserError

CREDENTIALS_HELP = ("set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), or put kaggle.json in ~/.kaggle/ "
                    "(kaggle.com → Settings → API → Create New Token)")


def rules_url(competition: str) -> str:
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
def kaggle_errors(competition: str, what: str = "") -> Iterator[None]:
    """Turn the client's HTTP and network failures into one clear sentence naming the fix."""
    import requests

    try:
        yield
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
            raise UserError(f"Kaggle says 404 Not Found for {target}: check the name (e.g. "
                            "aptos2019-blindness-detection, diabetic-retinopathy-detection, or the file names that "
                            "scripts/download.py --list shows)") from None
        raise UserError(f"Kaggle answered {status or 'an error'} for {target}: {str(e).splitlines()[0][:200]}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as e:
        raise UserError(f"cannot reach Kaggle ({type(e).__name__}): check the network connection (and any proxy "
                        "settings), then run this again; finished files are kept") from None
