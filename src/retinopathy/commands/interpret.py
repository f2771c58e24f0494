"""Interpret a trained experiment from its out-of-fold predictions: reports/<exp>/index.html, one page with the
CV QWK, referable and vision-threatening DR sensitivity / specificity / AUC with intervals, a per-fold table, the
ROC curve, the reliability diagram, every fold's curves with one verdict (diverging, over-fitting, unstable,
under-fitting), lr_find plots, the confusion matrix, and the most wrong and least sure images to click.

  retinopathy interpret --config debug
  retinopathy interpret --config debug --fold 0 --top 8
"""

from .. import cli


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__)
    p.add_argument("--fold", type=cli.number_in(0, 19),
                   help="only this fold's out-of-fold images (default: every fold)")
    cli.add_folds(p)
    p.add_argument("--top", type=cli.number_in(1, 200), default=16, help="images in each grid, 1-200 (default 16)")
    p.add_argument("--heat-maps", choices=["auto", "always", "never"], default="auto",
                   help="Grad-CAM overlays beside the images: auto draws them where they resolve (224 px and up), "
                        "always, or never (default auto)")
    args = p.parse_args(argv)
    from ..reports.interpret import interpret

    page = interpret(cli.experiment(args), fold=args.fold, top=args.top, heat_maps=args.heat_maps)
    print(f"interpretation → {page} (open it in a browser; it works offline)")

