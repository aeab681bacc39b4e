"""Data: image I/O, pixel geometry, dataset readers (hand, ISBI 2015, panoramic), in-memory datasets,
augmentation transforms, phantoms, the folder format of generated samples and its figures, and the near-copy
check of generated samples against the training images."""
