"""A before/after contact sheet PNG of preprocessing: each image's original with the eye found drawn in green, then
every method (none, crop, ben, clahe), so a person can check the crop at a glance.

  retinopathy contact-sheet ../shared/data/eyepacs-sample/train -o reports/preprocess_sheet.png
"""

from pathlib import Path

from .. import cli
from ..files import atomic_path


def main(argv: list[str] | None = None) -> None:
    """Run the stage with the command-line arguments ``argv`` (default: the process's)."""
    p = cli.parser(__doc__, overrides=False)
    p.add_argument("images", type=Path, help="a folder of images (or one image)")
    cli.add_overrides(p)
    p.add_argument("-o", "--output", type=Path, default=Path("reports/preprocess_sheet.png"))
    p.add_argument("--size", type=cli.number_in(32, 1024), default=256,
                   help="tile size in pixels, 32-1024 (default 256)")
    p.add_argument("--limit", type=cli.number_in(1, 200), default=10,
                   help="at most this many images, 1-200 (default 10)")
    args = p.parse_args(argv)
    from ..preprocessing.contact_sheet import contact_sheet
    from ..preprocessing.image_io import encode_png

    if not args.images.exists():
        raise cli.UserError(f"{args.images}: no such file or folder")
    files = [args.images] if args.images.is_file() else sorted(
        f for f in args.images.iterdir() if f.suffix.lower() in (".jpeg", ".jpg", ".png", ".tif", ".tiff"))
    if not files:
        raise cli.UserError(f"{args.images}: no images found")
    sheet = contact_sheet(files[:args.limit], size=args.size, labels=[f.stem for f in files[:args.limit]])
    with atomic_path(args.output) as tmp:
        tmp.write_bytes(encode_png(sheet))
    print(f"contact sheet of {min(len(files), args.limit)} image(s) → {args.output}")

