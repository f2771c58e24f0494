"""Interpret a trained experiment from its out-of-fold predictions: reports/<exp>/ gets the top losses and the
least sure images, the confusion matrix with per-grade precision and recall, every fold's training curves with a
diagnosis (under-fitting, over-fitting, learning rate too high), lr_find plots, and index.html tying them together.

  retinopathy interpret --config debug
  retinopathy interpret --config debug --fold 0 --top 8
"""

from .. import cli


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--fold", type=int, help="only this fold's out-of-fold images (default: every fold)")
    p.add_argument("--top", type=int, default=16, help="images in each grid (default 16)")
    p.add_argument("--no-heat-maps", action="store_true", help="leave out the Grad-CAM overlays (they need torch)")
    args = p.parse_args(argv)
    from ..reports.interpret import interpret

    page = interpret(cli.experiment(args), fold=args.fold, top=args.top, heat_maps=not args.no_heat_maps)
    print(f"interpretation → {page} (open it in a browser; it works offline)")

