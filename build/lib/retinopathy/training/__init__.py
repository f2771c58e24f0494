"""Stage 3, training: ``train_fold(experiment, fold)`` with fastai, and what it is built from: dataloaders, the
model by name, losses and callbacks."""
