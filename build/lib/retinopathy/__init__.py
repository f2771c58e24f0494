"""retinopathy: from `kaggle competitions download` to a diabetic-retinopathy submission with fastai."""

import warnings

# fastai's import still reaches torch.jit.script, which torch 2.14 marks deprecated: a warning users can do
# nothing about, printed by every script.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

__version__ = "0.1.0"
