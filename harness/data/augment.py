"""Paired image+mask loading and augmentation (albumentations applies spatial ops to both).

Resizing: LANCZOS for images, NEAREST for masks (paper Sec. 4.2). Decoded, resized pairs are cached
in memory by `PairDataset` so an epoch never decodes a file twice.
"""
from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from PIL import Image

from harness.data.records import Sample

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_pair(sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 HxWx3, mask uint8 HxW in {0,1}) resized to size x size."""
    with Image.open(sample.image) as im:
        rgb = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS))
    if sample.mask is None:
        return rgb, np.zeros((size, size), np.uint8)
    with Image.open(sample.mask) as mk:
        mask = np.asarray(mk.convert("L").resize((size, size), Image.Resampling.NEAREST))
    return rgb, (mask > 0).astype(np.uint8)


def paired_augmentation(strength: str = "paper") -> A.Compose:
    """Spatial transforms (applied to image and mask alike, nearest for the mask) and pixel-level
    transforms (image only), as the paper does with albumentations. strength "none" -> identity."""
    if strength == "none":
        return A.Compose([])
    return A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.9, 1.1), rotate=(-20, 20), translate_percent=(-0.05, 0.05),
                 border_mode=0, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=10, val_shift_limit=5, p=0.3),
    ])


def seed_augmentation(augment: A.Compose, seed: int) -> None:
    """Seed a Compose and each of its transforms differently: `Compose.set_random_seed` alone gives
    every child the same seed, so all of them fire together or not at all (measured: ~30 % of
    samples changed instead of ~94 %)."""
    augment.set_random_seed(seed % 2**32)
    for k, t in enumerate(augment.transforms):
        t.set_random_seed((seed * 7919 + k + 1) % 2**32)


class PairDataset(torch.utils.data.Dataset):
    """Samples -> (image tensor, mask tensor, class index, caption) with in-memory decode cache.

    image_norm: "minus1_1" (diffusion VAE input) or "imagenet" (downstream backbones).
    """

    def __init__(self, samples: list[Sample], size: int, augment: A.Compose | None = None,
                 image_norm: str = "minus1_1", classes: list[str] | None = None,
                 captions: list[str] | None = None, seed: int = 0):
        self.samples, self.size, self.augment, self.image_norm = list(samples), size, augment, image_norm
        self.classes = classes or sorted({s.label for s in self.samples})
        self.captions = captions
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of sample i in epoch e depends only on (seed, e, i): reproducible with any
        number of workers and after a resume."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def fill(self, rgb: np.ndarray, mask: np.ndarray) -> None:
        """Fill the decode cache with every pair at once: rgb (N, S, S, 3), mask (N, S, S), decoded as
        load_pair does (harness.downstream.decoded.pairs)."""
        if len(rgb) != len(self.samples) or len(mask) != len(self.samples):
            raise ValueError(f"fill: {len(rgb)} images and {len(mask)} masks for {len(self.samples)} samples")
        self._cache = {i: (rgb[i], mask[i]) for i in range(len(self.samples))}

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            self._cache[i] = load_pair(self.samples[i], self.size)
        return self._cache[i]

    def to_tensors(self, rgb: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = rgb.astype(np.float32) / 255.0
        x = x * 2.0 - 1.0 if self.image_norm == "minus1_1" else (x - IMAGENET_MEAN) / IMAGENET_STD
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), \
            torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]

    def __getitem__(self, i: int):
        rgb, mask = self.pair(i)
        if self.augment is not None:
            seed_augmentation(self.augment, self.seed * 1_000_003 + self.epoch * 100_003 + i)
            out = self.augment(image=rgb, mask=mask)
            rgb, mask = out["image"], out["mask"]
        image, m = self.to_tensors(rgb, mask)
        label = self.classes.index(self.samples[i].label) if self.samples[i].label in self.classes else -1
        caption = self.captions[i] if self.captions is not None else ""
        return {"image": image, "mask": m, "label": label, "caption": caption, "index": i}
