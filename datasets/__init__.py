"""Real data: LMDB image datasets, image folders, keypoint-pair (PCK) datasets,
samplers, and the dataset modes chosen with ``--dataset_mode``."""
