"""retinopathy: from `kaggle competitions download` to a diabetic-retinopathy submission with fastai."""

import os

# albumentations checks PyPI for a newer release at import; offline (GPU boxes, CI) that is a delay and a warning.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
