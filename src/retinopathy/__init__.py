"""retinopathy: from `kaggle competitions download` to a diabetic-retinopathy submission with fastai."""

import os
import warnings

# albumentations checks PyPI for a newer release at import; offline (GPU boxes, CI) that is a delay and a warning.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# fastai's import still reaches torch.jit.script, which torch 2.14 marks deprecated: a warning users can do
# nothing about, printed by every script.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

__version__ = "0.1.0"
