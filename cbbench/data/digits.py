"""The embedded default: scikit-learn's bundled digits, real images needing no download.

The 1797 8x8 grey digits (values 0..16) are scaled to [0, 1], upsampled to
32x32 (bilinear) and repeated to 3 channels so that ImageNet-style RGB models,
corruptions and attacks apply unchanged. The train/test split is stratified and
fixed by ``SPLIT_SEED``, so every machine sees the same 1437/360 images.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@lru_cache(maxsize=None)
def _split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    labels = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64 of ``split``."""
    if split not in ("train", "test"):
        raise ValueError(f"digits has splits 'train' and 'test', not {split!r}")
    images, labels = _split()[split]
    x = torch.from_numpy(images)[:, None]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1).contiguous()
    return x, torch.from_numpy(labels)
