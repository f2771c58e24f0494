"""The ``retinopathy`` command: every stage as a subcommand (``retinopathy train --config aptos_cpu --fold 0``).
Each stage lives in its own module here with ``main(argv)``; ``scripts/*.py`` call the same functions. A stage's
module is imported only when it is run, so ``retinopathy --help`` and the light stages stay free of torch."""

from __future__ import annotations

import importlib
import sys

#: subcommand → (module in this package, what it does); in pipeline order
COMMANDS = {
    "download": ("download", "download a competition with the official Kaggle client (resumable), then verify"),
    "verify": ("verify", "check every image decodes; record the bad ones (the raw folder is never changed)"),
    "synthesize": ("synthesize", "make a small synthetic competition in Kaggle's layout (for demos and tests)"),
    "preprocess": ("preprocess", "crop, Ben-normalise and resize every image once, into data/processed/"),
    "contact-sheet": ("contact_sheet", "a grid of raw vs preprocessed images, to look at before training"),
    "folds": ("folds", "stratified (and patient-grouped) cross-validation folds"),
    "train": ("train", "train one fold, or all, with fastai"),
    "predict": ("predict", "ensemble the folds, tune thresholds on OOF, write the submission CSV"),
    "interpret": ("interpret", "an HTML report: confusion matrix, top losses, least-sure images, heat maps"),
    "submit": ("submit", "submit a CSV to Kaggle and wait for its score (CSV competitions)"),
    "kernel": ("kernel", "build, push and submit an offline Kaggle kernel (code competitions such as APTOS)"),
    "export-onnx": ("export_onnx", "export trained folds to ONNX (float32 and int8) for torch-free serving"),
    "serve": ("serve", "a web page and JSON API that grade a fundus photograph on the CPU"),
    "pipeline": ("pipeline", "the whole pipeline for one config: preprocess → folds → train → predict"),
}

USAGE = "usage: retinopathy <command> [options]   (retinopathy <command> --help for its options)"


def overview() -> str:
    """The help text listing every subcommand."""
    width = max(map(len, COMMANDS))
    lines = [USAGE, "", "Diabetic-retinopathy toolkit for Kaggle's APTOS 2019 and EyePACS 2015. Commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Configs: --config aptos_cpu (a shipped config by name) or --config path/to/your.yaml."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Run ``retinopathy <command> …``; a user's mistake is one line and exit status 2."""
    from .. import cli

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        cli.run(lambda: print(overview(), flush=True))
        return
    if argv[0] == "--version":
        from importlib.metadata import version
        print(f"retinopathy {version('retinopathy')}")
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{name}'{hint}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f".{COMMANDS[name][0]}", __name__)
    sys.argv[0] = f"retinopathy {name}"  # argparse names the program after it in usage lines
    cli.run(lambda: module.main(rest))
