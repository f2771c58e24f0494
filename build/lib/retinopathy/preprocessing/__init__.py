"""Stage 2, preprocessing: pure fundus functions (find the eye, crop, Ben Graham, CLAHE), image decoding and
encoding, the batch stage that caches every image once per method and size, and training-time augmentation."""
