"""The required opening of every description, and the template descriptions used without an endpoint.

A template description is deterministic: the class plus measurements of the image and its mask
(lesion size, mean colour name, border irregularity from perimeter vs area).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.config import PROMPT_TEMPLATE

# Reference colours (RGB) for naming a lesion's mean colour: the nearest one wins.
COLOUR_NAMES = {
    "black": (35, 28, 28), "dark brown": (85, 55, 40), "brown": (135, 90, 60), "light brown": (185, 140, 105),
    "tan": (215, 180, 150), "pink": (215, 140, 145), "red": (175, 45, 55), "purple": (115, 45, 85),
    "blue-grey": (100, 110, 130), "white": (235, 230, 225),
}


def required_prefix(label: str) -> str:
    return PROMPT_TEMPLATE.format(class_name=label)


def normalise_answer(text: str, label: str) -> str | None:
    """One line, without wrapping quotes, beginning exactly with the required phrase; None if the
    answer does not begin with it (compared case-insensitively)."""
    t = " ".join(str(text).split()).strip("\"'`\u201c\u201d\u2018\u2019 ")
    prefix = required_prefix(label)
    if not t.lower().startswith(prefix.lower()):
        return None
    return prefix + t[len(prefix):]


def _lesion_pixels(image_path: Path, mask_path: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image as float32, boolean lesion mask at the image's size; all True without a mask)."""
    rgb = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)
    if mask_path is None:
        return rgb, np.ones(rgb.shape[:2], bool)
    mask = Image.open(mask_path).convert("L")
    if mask.size != (rgb.shape[1], rgb.shape[0]):
        mask = mask.resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST)
    return rgb, np.asarray(mask) > 127


def measure_lesion(image_path: Path, mask_path: Path | None) -> dict:
    """Lesion area fraction, mean colour name, and border irregularity = perimeter / perimeter of a
    disc of the same area (1.0 = disc). Perimeter: pixel-edge count x pi/4 (isotropic estimate)."""
    rgb, inside = _lesion_pixels(image_path, mask_path)
    area = int(inside.sum())
    mean = (rgb[inside] if area else rgb.reshape(-1, 3)).mean(axis=0)
    colour = min(COLOUR_NAMES, key=lambda n: float(((np.array(COLOUR_NAMES[n]) - mean) ** 2).sum()))
    padded = np.pad(inside, 1)
    edges = int((padded[1:, :] != padded[:-1, :]).sum() + (padded[:, 1:] != padded[:, :-1]).sum())
    irregularity = (edges * np.pi / 4) / (2 * np.sqrt(np.pi * area)) if area else 0.0
    return {"area_fraction": area / inside.size, "colour": colour, "irregularity": float(irregularity),
            "has_mask": mask_path is not None and area > 0}


def template_description(label: str, image_path: Path, mask_path: Path | None) -> str:
    """Deterministic: the same image, mask and class always give the same text."""
    m = measure_lesion(image_path, mask_path)
    if not m["has_mask"]:
        return f"{required_prefix(label)}, lesion predominantly {m['colour']} in colour"
    pct, r = round(100 * m["area_fraction"]), m["irregularity"]
    size = "small" if pct < 6 else "medium-sized" if pct < 15 else "large"
    border = ("a regular well-defined border" if r < 1.05 else
              "a slightly irregular border" if r < 1.15 else "an irregular poorly defined border")
    return (f"{required_prefix(label)}, {size} lesion covering {pct}% of the field, "
            f"predominantly {m['colour']} in colour, with {border}")
