"""What every script shares: the common arguments, resolving them to a config and paths, and turning a user's
mistake into one line on stderr (exit 2) instead of a traceback."""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from pathlib import Path

from .competitions import get_competition
from .config import Config, config_keys_help, load_config, shipped_configs
from .errors import UserError
from .experiment import Experiment
from .paths import DATA_DIR_ENV, Paths

#: the config every stage reads unless --config names another
DEFAULT_CONFIG = "demo"


class StageParser(argparse.ArgumentParser):
    """An argument parser whose ``--help`` lists every config key with the value of the config the command line
    chose (``--config`` and its overrides), not the built-in defaults."""

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, remembering the command line for the help."""
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """argparse's help, its epilog listing the chosen config's values."""
        self.epilog = config_keys_help(self._chosen_config())
        return super().format_help()

    def _chosen_config(self) -> Config | None:
        """The config the command line names (with its overrides), or None where it cannot be read."""
        argv = getattr(self, "_argv", [])
        name = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None) or next(
            (argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"), DEFAULT_CONFIG)
        overrides = [a for a in argv if "=" in a and not a.startswith("-")]
        try:
            return load_config(name, overrides)
        except (UserError, OSError):
            return None  # the help is still shown; the run itself says what is wrong with the config


def parser(description: str | None, overrides: bool = True) -> argparse.ArgumentParser:
    """An argument parser with --config, --data-dir, --raw-dir, --competition and key=value overrides (a stage with
    positional arguments of its own adds the overrides after them, with :func:`add_overrides`)."""
    p = StageParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                    epilog=config_keys_help())
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"a shipped config by name ({', '.join(shipped_configs())}) or a YAML file "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument("--data-dir", default=None, help=f"data root (default: ${DATA_DIR_ENV} or ./data)")
    data_args(p)
    if overrides:
        add_overrides(p)
    return p


def number_in(low: float, high: float, cast=int):
    """An argparse ``type``: a number from ``low`` to ``high`` (both included), else argparse's one-line error."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a{'n integer' if cast is int else ' number'}") from None
        if not low <= value <= high:  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, not {text}")
        return value

    return parse


def add_workers(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--workers: processes of a stage, at most one per core (more only fight over them)."""
    import os

    cores = os.cpu_count() or 1
    p.add_argument("--workers", type=number_in(1, cores), default=None,
                   help=f"processes, 1-{cores} (this machine's cores; default: one per core)")
    return p


def add_overrides(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The trailing key=value config overrides."""
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. epochs=3 arch=resnet18 image_size=128")
    return p


def data_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--competition and --raw-dir: which competition's data a stage works on."""
    p.add_argument("--competition", help="aptos2019 or eyepacs2015 (or the Kaggle slug): use data/raw/<slug>")
    p.add_argument("--raw-dir", help="a competition folder in Kaggle layout anywhere (default: data/raw/<dataset>)")
    return p


def resolve(args: argparse.Namespace, **changes) -> tuple[Config, Paths]:
    """The config (file, then overrides, then ``changes`` set by the script's own options) and the paths."""
    config = load_config(args.config, getattr(args, "overrides", ()))
    changes = {k: v for k, v in changes.items() if v is not None}
    for key in ("competition", "raw_dir"):  # from data_args, where the script has them
        if getattr(args, key, None):
            changes[key] = getattr(args, key)
    if changes.get("competition"):
        slug = get_competition(changes["competition"]).slug
        changes.update(competition=slug, dataset=slug, synthetic_images=0)
    if changes.get("raw_dir"):
        # Other data, other caches: processed images and folds are filed under the raw folder's name.
        raw = Path(changes["raw_dir"]).expanduser().resolve()
        changes.update(raw_dir=str(raw), dataset=raw.name, synthetic_images=0)
    config = config.replace(**changes) if changes else config
    paths = Paths.default(data_dir=args.data_dir)
    # init_from / pseudo_labels may name an experiment: its folder under models/
    named = {key: str(paths.experiment(value)) for key in ("init_from", "pseudo_labels")
             if (value := getattr(config, key)) and not Path(value).is_dir() and paths.experiment(value).is_dir()}
    if config.extra_data:  # a set may be named as a competition: its folder under data/raw/
        named["extra_data"] = " ".join(
            f"{extra_folder(where, paths)}" + (f"*{share:g}" if share != 1 else "")
            for where, share in config.extra_sources)
    return (config.replace(**named) if named else config), paths


def extra_folder(where: str, paths: Paths) -> Path:
    """An ``extra_data`` set's folder: a path as given, or a competition's name as its folder under data/raw/."""
    if Path(where).expanduser().is_dir():
        return Path(where).expanduser().resolve()
    try:
        competition = get_competition(where)
    except UserError:
        raise UserError(f"extra_data: {where}: no such folder, nor a competition's name (aptos2019, eyepacs2015)") \
            from None
    return paths.raw(competition.slug)


def experiment(args: argparse.Namespace, **changes) -> Experiment:
    """The experiment the script's arguments describe (with ``--folds``, where the stage has it, the folds it
    grades with)."""
    config, paths = resolve(args, **changes)
    spec = getattr(args, "folds", None)
    only = tuple(parse_fold_spec(spec, config.n_folds)) if spec and str(spec).lower() != "all" else None
    return Experiment(config, paths, only)


def add_folds(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--folds: grade with some folds only (by default every fold of the config, all of which must be trained)."""
    p.add_argument("--folds", help="grade with these folds only, e.g. 0,2 (default: every fold, all of which must be "
                                   "trained: an incomplete ensemble is refused unless named here)")
    return p


#: what to do about a file-system fault, by errno; the message names the path
_FAULTS = {
    errno.ENOSPC: "no space left on the device: free some, or point --data-dir / $RETINOPATHY_OUTPUT_DIR at a "
                  "disk with room; finished outputs are whole and the same command resumes",
    errno.EDQUOT: "disk quota exceeded: free some, or point --data-dir / $RETINOPATHY_OUTPUT_DIR elsewhere",
    errno.EROFS: "read-only file system: point --data-dir / $RETINOPATHY_OUTPUT_DIR at a writable folder",
    errno.EACCES: "permission denied: make it writable, or point --data-dir / $RETINOPATHY_OUTPUT_DIR elsewhere",
    errno.EPERM: "operation not permitted: make it writable, or point --data-dir / $RETINOPATHY_OUTPUT_DIR elsewhere",
    errno.ENOTDIR: "a file stands where a folder is needed: move it, or choose another --data-dir / "
                   "$RETINOPATHY_OUTPUT_DIR",
    errno.EEXIST: "a file stands where a folder is needed: move it, or choose another --data-dir / "
                  "$RETINOPATHY_OUTPUT_DIR",
    errno.EISDIR: "a folder stands where a file is needed: move it aside",
    errno.ENAMETOOLONG: "a name in this path is too long for the file system (over 255 bytes): give a shorter one",
}


def fault_message(error: OSError) -> str | None:
    """One line for a file-system fault (full disk, read-only, permissions, a file where a folder should be) that
    names the path and what to do; None for other errors."""
    advice = _FAULTS.get(error.errno)
    if advice is None:
        return None
    path = error.filename or "an output file"
    if len(str(path)) > 120:  # a path too long to use is too long to print whole
        path = f"{str(path)[:60]}…{str(path)[-40:]}"
    if error.errno in (errno.ENOTDIR, errno.EEXIST) and error.filename:
        blocking = next((p for p in [Path(error.filename), *Path(error.filename).parents] if p.is_file()), None)
        path = blocking or path
    return f"{path}: {advice}"


def run(main: Callable[[], object]) -> None:
    """Call a script's ``main``; a :class:`UserError` or a file-system fault becomes ``error: …`` on one line and
    exit status 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # before OSError, of which it is one
        quiet_closed_pipe()
    except OSError as e:
        message = fault_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        sys.exit(130)


def quiet_closed_pipe() -> None:
    """End quietly when the reader of our output went away (``retinopathy --help | head``): Python would print a
    traceback flushing stdout at exit, so stdout is pointed at /dev/null first (Python's documented recipe)."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


def parse_fold_spec(spec: str, n_folds: int) -> list[int]:
    """``"all"`` → every fold; ``"2"`` or ``"0,3"`` → those folds, each checked against ``n_folds``."""
    if str(spec).strip().lower() == "all":
        return list(range(n_folds))
    try:
        folds = [int(part) for part in str(spec).split(",")]
    except ValueError:
        raise UserError(f"--fold '{spec}': give a fold number 0..{n_folds - 1}, a list like 0,2, or 'all'") from None
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise UserError(f"--fold {bad[0]}: this config has n_folds={n_folds}, so folds go 0..{n_folds - 1}")
    return folds
