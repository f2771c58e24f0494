"""Stage 5, reports: the interpretation page (top losses, confusion matrix, training curves), the results table of
every run, and fastai's image cleaner on a trained fold."""
