"""Code competitions (APTOS 2019): a Kaggle dataset of wheels and trained folds, a script kernel that installs from
it offline and writes submission.csv, and the client calls that push, watch and submit them."""
