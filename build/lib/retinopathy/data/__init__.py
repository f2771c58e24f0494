"""Stage 1, the data: the two competitions' layouts, downloading with the official Kaggle client, verifying every
image, synthetic competitions for tests and the demo, label-cleaning decisions, and the folds."""
