"""Paired augmentation keeps image and mask aligned; resizing keeps masks binary."""
import numpy as np
import torch
from PIL import Image

from harness.data.augment import PairDataset, load_pair, paired_augmentation
from harness.data.records import Sample


def make_pair(tmp_path, size=50):
    """Image whose red channel is 255 exactly where the (asymmetric) mask is on."""
    mask = np.zeros((size, size), np.uint8)
    mask[5:20, 8:40] = 255
    mask[20:35, 30:40] = 255
    img = np.full((size, size, 3), 40, np.uint8)
    img[mask > 0, 0] = 255
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_m.png")
    return Sample(id="a", image=tmp_path / "a.png", mask=tmp_path / "a_m.png", label="x")


def test_resize_keeps_mask_binary_and_aligned(tmp_path):
    s = make_pair(tmp_path)
    rgb, mask = load_pair(s, 64)
    assert rgb.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert set(np.unique(mask).tolist()) == {0, 1}
    # LANCZOS blurs the image edge; away from edges image and mask agree
    red = rgb[..., 0] > 150
    assert (red == mask.astype(bool)).mean() > 0.95


def test_augmentation_moves_image_and_mask_together(tmp_path):
    s = make_pair(tmp_path)
    ds = PairDataset([s] * 8, size=64, augment=paired_augmentation("paper"), seed=3)
    changed = 0
    for i in range(8):
        item = ds[i]
        img, mask = item["image"], item["mask"][0]
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        red = img[0] > 0.3          # red channel back in [-1, 1]
        inside = mask.bool()
        assert (red == inside).float().mean() > 0.93
        changed += not torch.equal(mask, ds.to_tensors(*ds.pair(i))[1][0])
    assert changed >= 4             # the augmentation really transforms


def test_augmentation_is_seeded_by_seed_epoch_index(tmp_path):
    s = make_pair(tmp_path)
    a = PairDataset([s] * 4, size=32, augment=paired_augmentation(), seed=1)
    b = PairDataset([s] * 4, size=32, augment=paired_augmentation(), seed=1)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(4))
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["image"], b[i]["image"]) for i in range(4))
