"""What every script shares: the common arguments, resolving them to a config and paths, and turning a user's
mistake into one line on stderr (exit 2) instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .config import Config, load_config
from .errors import UserError
from .experiment import Experiment
from .paths import DATA_DIR_ENV, Paths


def parser(description: str | None, config_default: str | None = None, overrides: bool = True) -> argparse.ArgumentParser:
    """An argument parser with --config, --data-dir and key=value overrides."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=config_default,
                   help=f"experiment config YAML (default: {config_default or 'built-in defaults'})")
    p.add_argument("--data-dir", default=None, help=f"data root (default: ${DATA_DIR_ENV} or ./data)")
    if overrides:
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, e.g. epochs=3 arch=resnet18 image_size=128")
    return p


def resolve(args: argparse.Namespace, **changes) -> tuple[Config, Paths]:
    """The config (file, then overrides, then ``changes`` set by the script's own options) and the paths."""
    config = load_config(args.config, getattr(args, "overrides", ()))
    changes = {k: v for k, v in changes.items() if v is not None}
    return (config.replace(**changes) if changes else config), Paths.default(data_dir=args.data_dir)


def experiment(args: argparse.Namespace, **changes) -> Experiment:
    return Experiment(*resolve(args, **changes))


def run(main: Callable[[], object]) -> None:
    """Call a script's ``main``; a :class:`UserError` becomes ``error: …`` on one line and exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)
