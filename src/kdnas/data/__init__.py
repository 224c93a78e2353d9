"""Data: bundled CIFAR-10 subset, CIFAR-10/100, image folders; one BatchSource API for every trainer.

    dm = build_data(cfg.data, data_dir, cache_dir)
    for batch in dm.loader("train", 64, train=True, seed=cfg.seed).epoch(epoch): ...
"""

from kdnas.data.augment import apply_crop_flip, crop_flip_params, normalize
from kdnas.data.datasets import Batch, BatchSource, DataModule, build_data

__all__ = ["Batch", "BatchSource", "DataModule", "build_data", "apply_crop_flip", "crop_flip_params",
           "normalize"]
