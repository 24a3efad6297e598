"""The embedded demo dataset: small synthetic dermoscopy-like images, masks and descriptions.

Written in the ISIC-GPT layout so that every later stage can run on it offline, in minutes:

    <output_dir>/images/<class name>/<id>.png     RGB
    <output_dir>/masks/<class name>/<id>.png      mode "L", 0 = skin, 255 = lesion
    <output_dir>/descriptions.json                {"<id>": "a dermoscopic lesion photo of ...", ...}
    <output_dir>/demo.json                        generator parameters + content digest

How one image is drawn (all numpy, on a square grid of side `s`):
  1. skin: a random skin tone, a smooth low-frequency tone variation and fine grain;
  2. lesion shape: a polar contour r(theta) = r0 * (1 + radial noise); the mask is exactly
     the pixels with distance-to-centre <= r(theta). Class sets the size and how irregular it is;
  3. lesion colour: a class-specific painter fills a colour field (uniform brown, blue-black
     patches, waxy ridges, vessels, scales, lobules, light centre) that is blended into the skin
     inside the mask, a little faded near the border;
  4. hairs: a few thin dark curves drawn over everything (not part of the mask);
  5. vignetting: the dark circular corners of a dermoscope.

Deterministic: image i is drawn from numpy.random.default_rng([seed, i]) and PNGs carry no
metadata, so the same arguments give the same bytes. The folder is built next to `output_dir`
and renamed into place; an existing identical build is reused, anything else is left alone.

layout="ham10000" writes a second, smaller set (HAM_DEMO_CLASSES: nevus 32, melanoma 8, benign
keratosis 8, basal cell carcinoma 6, actinic keratosis 6, vascular lesion 5, dermatofibroma 5)
in the HAM10000 layout, as an unseen external set for the robustness test (paper Table 3):

    <output_dir>/HAM10000_metadata.csv            lesion_id,image_id,dx,dx_type,age,sex,localization,dataset
    <output_dir>/HAM10000_images_part_1/ISIC_<7 digits>.jpg       first half of the images, JPEG q95
    <output_dir>/HAM10000_images_part_2/ISIC_<7 digits>.jpg       the rest
    <output_dir>/HAM10000_segmentations_lesion_tschandl/ISIC_<7 digits>_segmentation.png   0/255
    <output_dir>/demo.json                        params (incl. layout and HAM_SHIFT), counts, the
                                                  shift values drawn for every image, digest

Like HAM10000 it has no descriptions, and a lesion (lesion_id HAM_<7 digits>) has 1-3 images
(probabilities 0.5/0.3/0.2; >= 2 lesions per class): the lesion is drawn once with the same class
styles and each view is that skin patch turned by up to 20 degrees, moved by up to 4 % of the side
and lit anew, so a lesion-grouped split is needed. Its random streams are separate from the
training set's (see _ham_rng), so its images are new draws, not copies. Every image carries a
deliberate domain shift, drawn per image from the HAM_SHIFT ranges:
  - lesion scale: the radius drawn for the class x 0.75-1.35 (per lesion; the contour is still
    clipped at 0.35 of the side), the mask is that scaled contour;
  - colour cast: warm, per-channel gains R x 1.00-1.12, G x 0.92-1.00, B x 0.78-0.92;
  - illumination: contrast x 0.75-0.95 about the image mean, gamma 0.85-1.15, brightness
    x 0.80-1.00 and a linear ramp of up to +-15 % across the image in a random direction;
  - vignetting: a smaller visible circle (radius 0.44-0.52 of the side, training set 0.5-0.7)
    with a softer edge (0.12 of the side, training set 0.06), times a radial darkening to
    x (0.65-0.85) at half the side;
  - JPEG compression (quality 95) instead of PNG.
A logistic regression on lesion colour/size features, trained on the default training set, gets
99-100 % in-domain (5-fold CV) but 69-74 % on the default HAM set (seeds 0-3; majority class 46 %).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.files import user_dir_mode
from harness.config import PROMPT_TEMPLATE
from harness.data.layouts import HAM_DX, HAM_METADATA
from harness.errors import HarnessError

GENERATOR_VERSION = 1   # bump when the drawing changes, so old builds are not taken for new ones

# Readable class name -> default image count (HAM10000's dx codes nv, mel, bkl, bcc, akiec, vasc,
# df; the majority class stays the majority, every class has >= 11 for a split plus 5-fold CV).
DEMO_CLASSES: dict[str, int] = {
    "melanocytic nevus": 50,
    "melanoma": 20,
    "benign keratosis": 20,
    "basal cell carcinoma": 15,
    "actinic keratosis": 12,
    "vascular lesion": 12,
    "dermatofibroma": 11,
}


# The HAM10000-layout set (layout="ham10000"): HAM10000's imbalance, small; every class >= 5.
HAM_DEMO_CLASSES: dict[str, int] = {
    "melanocytic nevus": 32,
    "melanoma": 8,
    "benign keratosis": 8,
    "basal cell carcinoma": 6,
    "actinic keratosis": 6,
    "vascular lesion": 5,
    "dermatofibroma": 5,
}
DEMO_LAYOUTS = ("isic-gpt", "ham10000")

# extra_test=True (the embedded demo's default): this many more images per class, all in the test
# split, so the test split holds ~150 images instead of ~26 and a real-only accuracy interval is
# ~10 points wide instead of 13-21 (one image = 0.7 points, not 3.8). The other images are split
# exactly as `prepare` would split them with DEMO_SPLIT (the paper's test fraction, seed 42), so
# the training split, and every model trained on it, is the same as without the extra images.
DEMO_EXTRA_TEST: dict[str, int] = {name: round(0.9 * n) for name, n in DEMO_CLASSES.items()}
DEMO_SPLIT = (0.176, 42)      # (test_fraction, seed): PrepareConfig's defaults
HAM_GENERATOR_VERSION = 1   # bump when the HAM set's drawing or shift changes

# The HAM10000-layout set's domain shift: uniform ranges, drawn per lesion (radius_scale) or per
# image (the rest). Recorded in demo.json's params; the module docstring says what each one does.
HAM_SHIFT: dict[str, tuple[float, float]] = {
    "radius_scale": (0.75, 1.35),        # lesion radius x this (the class draw stays the same)
    "view_rotation_deg": (-20.0, 20.0),  # each view: the same skin patch turned ...
    "view_shift": (-0.04, 0.04),         # ... and moved by this fraction of the side
    "gain_r": (1.00, 1.12),              # warm colour cast: per-channel gains
    "gain_g": (0.92, 1.00),
    "gain_b": (0.78, 0.92),
    "contrast": (0.75, 0.95),            # about the image mean
    "gamma": (0.85, 1.15),               # on [0, 1] intensities
    "brightness": (0.80, 1.00),
    "gradient": (0.0, 0.15),             # linear illumination ramp, +-this at the image edge
    "vignette_radius": (0.44, 0.52),     # visible circle / side (training set: 0.5-0.7) ...
    "vignette_width": (0.12, 0.12),      # ... with a softer edge (training set: 0.06) ...
    "vignette_darkening": (0.15, 0.35),  # ... and a radial darkening: x (1 - this) at 0.5 side
}
# Views per lesion (HAM10000 holds repeated dermoscopies of one lesion) and their probabilities.
HAM_VIEWS = ((1, 2, 3), (0.5, 0.3, 0.2))


class DemoDataError(HarnessError, RuntimeError):
    """The output folder cannot be used for the demo dataset (the message names it)."""


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, s: int, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1]: a cells x cells grid upsampled bicubically to s x s."""
    grid = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((s, s), Image.BICUBIC))


def _mix(a, b, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours a -> b with weight t (H x W), giving H x W x 3."""
    a, b, t = np.asarray(a, np.float32), np.asarray(b, np.float32), t[..., None]
    return a * (1.0 - t) + b * t


def _jitter(rng: np.random.Generator, colour, amount: float = 0.12) -> np.ndarray:
    """The colour a bit lighter or darker (by up to `amount`), with a slight random tint."""
    return np.asarray(colour, np.float32) * rng.uniform(1 - amount, 1 + amount) + rng.normal(0.0, 3.0, 3)


@dataclass
class _Lesion:
    """Geometry shared by the painters; rho and r are in pixels, depth = 1 - rho/r (1 at centre)."""
    s: int
    rho: np.ndarray      # distance of every pixel from the lesion centre
    r: np.ndarray        # contour radius in the direction of every pixel
    mask: np.ndarray     # bool, rho <= r
    depth: np.ndarray    # 0 on the contour, 1 at the centre, < 0 outside


def _paint_nevus(rng, les):
    brown = _jitter(rng, (150, 95, 60))
    darker = brown * 0.75
    return _mix(brown, darker, np.clip(les.depth, 0, 1) * 0.6), "uniform brown pigmentation"


def _paint_melanoma(rng, les):
    field = _smooth_noise(rng, les.s, 5)
    colour = _mix(_jitter(rng, (90, 55, 35)), _jitter(rng, (30, 22, 22)), np.clip(field + 0.5, 0, 1))
    blue = np.clip((_smooth_noise(rng, les.s, 4) - 0.3) * 3.0, 0, 1)       # blue-white veil patches
    colour = _mix(colour, _jitter(rng, (85, 95, 130)), blue * 0.8)
    return colour, "asymmetric blue-black and dark brown pigmentation"


def _paint_keratosis(rng, les):
    ridges = np.sin(_smooth_noise(rng, les.s, 9) * 12.0)                   # cerebriform, waxy
    colour = _mix(_jitter(rng, (190, 145, 105)), _jitter(rng, (150, 110, 75)), (ridges + 1) / 2)
    return colour, "light brown waxy surface with fissures"


def _paint_bcc(rng, les):
    sheen = np.clip(_smooth_noise(rng, les.s, 4), 0, 1) * 0.7                # pearly white patches
    colour = _mix(_jitter(rng, (215, 135, 145)), (245, 225, 225), sheen)
    vessels = Image.new("L", (les.s, les.s), 0)
    draw = ImageDraw.Draw(vessels)
    r0 = float(np.median(les.r))
    cy = cx = les.s / 2
    for _ in range(rng.integers(3, 6)):                                     # arborizing vessels
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * r0
        x, y = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
        points = [(x, y)]
        for _ in range(4):
            angle += rng.normal(0, 0.6)
            x, y = x + 0.2 * r0 * np.cos(angle), y + 0.2 * r0 * np.sin(angle)
            points.append((x, y))
        draw.line(points, fill=255, width=1)
    colour[np.asarray(vessels) > 0] = (170, 30, 45)
    return colour, "pink pearly translucent surface with arborizing vessels"


def _paint_akiec(rng, les):
    blotches = np.clip(_smooth_noise(rng, les.s, 6) + 0.5, 0, 1)
    colour = _mix(_jitter(rng, (205, 110, 100)), _jitter(rng, (175, 80, 75)), blotches)
    scale = rng.random((les.s, les.s)) < 0.12                                # white keratin scales
    colour[scale] = colour[scale] * 0.2 + np.array([235, 225, 215]) * 0.8
    return colour, "reddish scaly surface with white keratin"


def _paint_vascular(rng, les):
    colour = np.empty((les.s, les.s, 3), np.float32)
    colour[:] = _jitter(rng, (110, 30, 70))                              # purple septa
    yy, xx = np.mgrid[0:les.s, 0:les.s]
    r0 = float(np.median(les.r))
    for _ in range(rng.integers(4, 8)):                                      # red lacunae
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.6) * r0
        x, y = les.s / 2 + radius * np.cos(angle), les.s / 2 + radius * np.sin(angle)
        lobule = (xx - x) ** 2 + (yy - y) ** 2 <= (rng.uniform(0.25, 0.45) * r0) ** 2
        colour[lobule] = _jitter(rng, (190, 35, 55))
    return colour, "red-purple lacunae separated by septa"


def _paint_df(rng, les):
    rim = np.clip(1.5 - les.depth * 2.0, 0, 1)                              # 0 at the centre, 1 at the rim
    colour = _mix(_jitter(rng, (225, 205, 190), 0.05), _jitter(rng, (150, 100, 70)), rim)
    return colour, "brown peripheral network with a central white patch"


@dataclass(frozen=True)
class _Style:
    painter: object                   # (rng, lesion) -> (H x W x 3 colour field, colour words)
    radius: tuple[float, float]       # lesion radius as a fraction of the image side
    irregularity: tuple[float, float]  # amplitude of the radial noise on the contour
    grain: float                      # fine texture inside the lesion (colour units)


_STYLES: dict[str, _Style] = {
    "melanocytic nevus": _Style(_paint_nevus, (0.18, 0.26), (0.02, 0.06), 4.0),
    "melanoma": _Style(_paint_melanoma, (0.25, 0.31), (0.12, 0.22), 10.0),
    "benign keratosis": _Style(_paint_keratosis, (0.20, 0.28), (0.05, 0.12), 12.0),
    "basal cell carcinoma": _Style(_paint_bcc, (0.15, 0.24), (0.04, 0.10), 5.0),
    "actinic keratosis": _Style(_paint_akiec, (0.17, 0.26), (0.08, 0.15), 8.0),
    "vascular lesion": _Style(_paint_vascular, (0.13, 0.21), (0.03, 0.08), 4.0),
    "dermatofibroma": _Style(_paint_df, (0.10, 0.15), (0.02, 0.06), 4.0),
}


def _draw_scene(rng: np.random.Generator, label: str, s: int,
                radius_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """Steps 1-4 of one image: the float s x s x 3 picture before vignetting, its bool mask and a
    description. radius_scale multiplies the lesion radius drawn for the class (the HAM10000-layout
    set's scale shift); 1.0 leaves the draws and the result exactly as they were."""
    style = _STYLES[label]

    # 1. skin
    light, dark = np.array([238, 203, 178], np.float32), np.array([196, 145, 112], np.float32)
    tone = light + (dark - light) * rng.uniform()
    image = tone + _smooth_noise(rng, s, 4)[..., None] * 10.0 + rng.normal(0.0, 3.0, (s, s, 1))

    # 2. lesion contour: r(theta) = r0 * (1 + sum of a few random harmonics)
    cy, cx = s / 2 + rng.uniform(-0.06, 0.06, 2) * s
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    rho, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    r0 = rng.uniform(*style.radius) * s * radius_scale
    irregularity = rng.uniform(*style.irregularity)
    wobble = sum(rng.normal(0, 1) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 9))
    r = r0 * (1.0 + irregularity * wobble)
    r = np.clip(r, 0.4 * r0, 0.35 * s)            # stays inside the dermoscope's visible circle
    mask = rho <= r
    les = _Lesion(s, rho, r, mask, 1.0 - rho / r)

    # 3. lesion colour, blended in (70% opacity at the border, full from a quarter of the way in)
    colour, colour_words = style.painter(rng, les)
    colour = colour + rng.normal(0.0, style.grain, (s, s, 1))
    alpha = np.where(mask, 0.7 + 0.3 * np.clip(les.depth * 4.0, 0, 1), 0.0)[..., None]
    image = image * (1.0 - alpha) + colour * alpha

    # 4. hairs: quadratic Bezier curves across the image, not part of the mask
    n_hairs = int(rng.integers(0, 4))
    hairs = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(hairs)
    t = np.linspace(0, 1, 24)[:, None]
    for _ in range(n_hairs):
        p0, p1, p2 = rng.uniform(0, s, (3, 2))
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        draw.line([tuple(p) for p in curve], fill=255, width=1)
    hair = np.asarray(hairs) > 0
    image[hair] = image[hair] * 0.25 + np.array([40, 30, 25]) * 0.75

    # description from what was actually drawn
    area = mask.mean()
    size_word = "small" if area < 0.06 else "medium-sized" if area < 0.15 else "large"
    border = ("a regular well-defined border" if irregularity < 0.07 else
              "a slightly irregular border" if irregularity < 0.13 else "an irregular poorly defined border")
    text = f"{PROMPT_TEMPLATE.format(class_name=label)}, {size_word} lesion with {colour_words} and {border}"
    if n_hairs:
        text += ", a few overlying hairs"
    return image, mask, text


def _draw_example(rng: np.random.Generator, label: str, s: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One image (s x s x 3 uint8), its mask (s x s uint8, 0/255) and a description."""
    image, mask, text = _draw_scene(rng, label, s)

    # 5. vignetting: dark corners outside a circle of radius 0.5-0.7 s around the image centre
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    vignette_r = rng.uniform(0.5, 0.7) * s
    falloff = np.clip((vignette_r - np.hypot(yy - s / 2, xx - s / 2)) / (0.06 * s), 0, 1)
    image = image * falloff[..., None]

    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    mask_u8 = np.where(mask, 255, 0).astype(np.uint8)
    return image, mask_u8, text


# --------------------------------------------------------------------------------------------
# The HAM10000-layout set
# --------------------------------------------------------------------------------------------

_HAM_STREAM = 10000    # first spawn_key entry of every HAM stream
_CODE_OF = {name: code for code, name in HAM_DX.items()}
# Plausible metadata values; dx_type choices per dx code roughly follow HAM10000's confirmations.
_HAM_DX_TYPES = {
    "nv": (("follow_up", "histo", "consensus", "confocal"), (0.55, 0.37, 0.07, 0.01)),
    "mel": (("histo",), (1.0,)),
    "bkl": (("histo", "consensus", "confocal"), (0.5, 0.44, 0.06)),
    "bcc": (("histo",), (1.0,)),
    "akiec": (("histo",), (1.0,)),
    "vasc": (("histo", "consensus"), (0.6, 0.4)),
    "df": (("histo", "consensus"), (0.6, 0.4)),
}
_HAM_LOCALIZATIONS = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest",
                      "foot", "neck", "scalp", "hand", "ear")
_HAM_SOURCES = ("vidir_modern", "vidir_molemax", "rosendahl", "vienna_dias")
HAM_METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")


def _ham_rng(seed: int, *key: int) -> np.random.Generator:
    """A HAM-set random stream, apart from the isic-gpt set's default_rng([seed, i]).

    The key goes in SeedSequence's spawn_key, not in a longer list seed: numpy ignores trailing
    zeros of a list seed, so default_rng([seed, 1, 0]) draws exactly what isic-gpt image 1 draws.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_HAM_STREAM, *key)))


def _ham_plan(seed: int, counts: dict[str, int]) -> list[tuple[str, int]]:
    """(class name, number of views) per lesion, in file order. Every class of >= 2 images gets
    >= 2 lesions, so the lesion-grouped split can keep one on each side."""
    rng = _ham_rng(seed, 1)
    lesions = []
    for name, n in counts.items():
        left = n
        while left:
            cap = n - 1 if left == n and n >= 2 else left      # the first lesion leaves room for a second
            views = min(int(rng.choice(HAM_VIEWS[0], p=HAM_VIEWS[1])), cap)
            lesions.append((name, views))
            left -= views
    return [lesions[i] for i in rng.permutation(len(lesions))]


def _ham_metadata(rng: np.random.Generator, dx: str) -> dict[str, str]:
    """dx_type, age, sex, localization and dataset of one lesion (the same for all its views)."""
    dx_types, p = _HAM_DX_TYPES[dx]
    return {"dx_type": str(rng.choice(dx_types, p=p)),
            "age": f"{5.0 * int(rng.integers(4, 18)):.1f}",              # 20.0-85.0, as HAM's 5-year steps
            "sex": str(rng.choice(("male", "female"))),
            "localization": str(rng.choice(_HAM_LOCALIZATIONS)),
            "dataset": str(rng.choice(_HAM_SOURCES))}


def _warp(image: np.ndarray, mask: np.ndarray, angle: float, dy: float, dx: float):
    """Turn the picture by `angle` (radians) about its centre and move it by (dy, dx) pixels: the
    image with bilinear interpolation, the mask with nearest neighbour; beyond the border the
    edge pixels repeat (lesions never reach it, and the vignetting darkens it)."""
    s = image.shape[0]
    c = s / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    y, x = yy - c - dy, xx - c - dx                     # the inverse transform: output -> source
    sy = c + np.cos(angle) * y - np.sin(angle) * x - 0.5
    sx = c + np.sin(angle) * y + np.cos(angle) * x - 0.5
    sy, sx = np.clip(sy, 0, s - 1), np.clip(sx, 0, s - 1)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, s - 1), np.minimum(x0 + 1, s - 1)
    wy, wx = (sy - y0)[..., None], (sx - x0)[..., None]
    out = ((image[y0, x0] * (1 - wx) + image[y0, x1] * wx) * (1 - wy)
           + (image[y1, x0] * (1 - wx) + image[y1, x1] * wx) * wy)
    return out, mask[np.rint(sy).astype(int), np.rint(sx).astype(int)]


def _ham_view(rng: np.random.Generator, scene: np.ndarray, mask: np.ndarray):
    """One view of a drawn lesion with the domain shift: (image uint8, mask uint8 0/255, values)."""
    def draw(name):
        return float(rng.uniform(*HAM_SHIFT[name]))

    s = scene.shape[0]
    angle, dy, dx = draw("view_rotation_deg"), draw("view_shift") * s, draw("view_shift") * s
    image, mask = _warp(scene, mask, np.deg2rad(angle), dy, dx)

    gains = [draw("gain_r"), draw("gain_g"), draw("gain_b")]
    contrast, gamma, brightness = draw("contrast"), draw("gamma"), draw("brightness")
    gradient, gradient_angle = draw("gradient"), float(rng.uniform(0, 2 * np.pi))
    vignette_r, width, darkening = draw("vignette_radius"), draw("vignette_width"), draw("vignette_darkening")

    image = image * np.asarray(gains)                                       # colour cast
    mean = image.mean(axis=(0, 1))
    image = mean + (image - mean) * contrast
    image = 255.0 * (np.clip(image, 0, 255) / 255.0) ** gamma
    c = s / 2
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    ramp = ((xx - c) * np.cos(gradient_angle) + (yy - c) * np.sin(gradient_angle)) / c
    rho = np.hypot(yy - c, xx - c)
    light = (brightness * (1 + gradient * ramp) * (1 - darkening * (rho / c) ** 2)
             * np.clip((vignette_r * s - rho) / (width * s), 0, 1))
    image = image * light[..., None]

    values = {"rotation_deg": angle, "shift_px": [dy, dx], "gains": gains, "contrast": contrast,
              "gamma": gamma, "brightness": brightness, "gradient": gradient,
              "gradient_angle_deg": float(np.rad2deg(gradient_angle)), "vignette_radius": vignette_r,
              "vignette_width": width, "vignette_darkening": darkening}
    return (np.clip(np.rint(image), 0, 255).astype(np.uint8), np.where(mask, 255, 0).astype(np.uint8),
            values)


def _write_ham10000(tmp: Path, counts: dict[str, int], seed: int, min_size: int, max_size: int,
                    progress: bool) -> dict:
    """The HAM10000 layout into `tmp`; returns the per-image shift values for demo.json."""
    parts = [tmp / "HAM10000_images_part_1", tmp / "HAM10000_images_part_2"]
    masks = tmp / "HAM10000_segmentations_lesion_tschandl"
    for folder in (*parts, masks):
        folder.mkdir()
    plan = _ham_plan(seed, counts)
    n_images = sum(views for _, views in plan)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_images, desc="demo dataset (HAM10000 layout)", unit="img")
    rows, shifts, i = [], {}, 0
    for k, (label, views) in enumerate(plan):
        rng = _ham_rng(seed, 2, k)
        side = int(rng.integers(min_size, max_size + 1))
        radius_scale = float(rng.uniform(*HAM_SHIFT["radius_scale"]))
        scene, lesion_mask, _ = _draw_scene(rng, label, side, radius_scale)
        lesion_id, dx = f"HAM_{k:07d}", _CODE_OF[label]
        meta = _ham_metadata(_ham_rng(seed, 4, k), dx)
        for _ in range(views):
            image, mask, values = _ham_view(_ham_rng(seed, 3, i), scene, lesion_mask)
            image_id = f"ISIC_{i:07d}"
            part = parts[0] if i < (n_images + 1) // 2 else parts[1]          # first half in part 1
            Image.fromarray(image).save(part / f"{image_id}.jpg", format="JPEG", quality=95)
            Image.fromarray(mask).save(masks / f"{image_id}_segmentation.png", format="PNG")
            rows.append({"lesion_id": lesion_id, "image_id": image_id, "dx": dx, **meta})
            shifts[image_id] = {"lesion_id": lesion_id, "radius_scale": radius_scale, **values}
            i += 1
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()
    with open(tmp / HAM_METADATA, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=HAM_METADATA_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    rounded = json.loads(json.dumps(shifts), parse_float=lambda v: round(float(v), 4))
    return {"n_lesions": len(plan), "shift_per_image": rounded}


# --------------------------------------------------------------------------------------------
# Building the folder
# --------------------------------------------------------------------------------------------

def _digest(root: Path) -> str:
    """sha256 over the relative paths and bytes of every file except demo.json."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "demo.json"):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


def _is_same_build(root: Path, params: dict) -> bool:
    try:
        info = json.loads((root / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("params") == params and info.get("digest") == _digest(root)


def _check_existing(root: Path, params: dict) -> bool:
    """True: reuse `root`. False: `root` is free. Raises if it holds anything else."""
    if not root.exists():
        return False
    if root.is_dir() and not any(root.iterdir()):
        return False
    if root.is_dir() and _is_same_build(root, params):
        return True
    raise DemoDataError(
        f"{root} already exists and is not a demo dataset built with {params}; "
        "refusing to overwrite it (choose another folder or remove it)")


def _demo_labels(counts: dict[str, int], seed) -> list[str]:
    labels = [name for name, n in counts.items() for _ in range(n)]
    return [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]


def _fixed_split(labels: list[str]) -> dict[str, str]:
    """Sample id -> "train"/"test": the split `prepare` gives the flat set (DEMO_SPLIT)."""
    from harness.data.records import Dataset, Sample
    from harness.data.splits import train_test_split
    samples = [Sample(id=f"DEMO_{i:07d}", image=Path(), mask=None, label=label) for i, label in enumerate(labels)]
    split = train_test_split(Dataset(samples=samples, root=Path("demo"), layout="isic-gpt"), *DEMO_SPLIT)
    return {s.id: s.split for s in split.samples}


def _write_isic_gpt(tmp: Path, counts: dict[str, int], seed: int, min_size: int, max_size: int,
                    progress: bool, extra_test: bool = False) -> dict:
    """The ISIC-GPT layout into `tmp` (flat, or train/ + test/ with extra_test); returns nothing extra
    for demo.json. Image i is drawn from default_rng([seed, i]); the extra test images follow the others."""
    labels = _demo_labels(counts, seed)
    split = _fixed_split(labels) if extra_test else {}
    if extra_test:
        labels += _demo_labels(DEMO_EXTRA_TEST, [seed, 1])
    folders = {f"DEMO_{i:07d}": tmp / split.get(f"DEMO_{i:07d}", "test" if extra_test else "") for i in range(len(labels))}
    for part in set(folders.values()):
        for folder in ("images", "masks"):
            for name in counts:
                (part / folder / name).mkdir(parents=True)
    items = enumerate(labels)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, total=len(labels), desc="demo dataset", unit="img")
    descriptions = {}
    for i, label in items:
        rng = np.random.default_rng([seed, i])
        side = int(rng.integers(min_size, max_size + 1))
        image, mask, text = _draw_example(rng, label, side)
        sample_id = f"DEMO_{i:07d}"
        part = folders[sample_id]
        Image.fromarray(image).save(part / "images" / label / f"{sample_id}.png", format="PNG")
        Image.fromarray(mask).save(part / "masks" / label / f"{sample_id}.png", format="PNG")
        descriptions[sample_id] = text
    (tmp / "descriptions.json").write_text(json.dumps(descriptions, indent=1, sort_keys=True) + "\n")
    return {}


def make_demo_dataset(output_dir, seed: int = 0, per_class: int = 0, min_size: int = 64,
                      max_size: int = 128, progress: bool = False, layout: str = "isic-gpt",
                      extra_test: bool = False) -> Path:
    """Build (or reuse) the demo dataset in `output_dir` and return its path.

    layout="isic-gpt" writes the training demo set, layout="ham10000" the shifted HAM10000-layout
    set (see the module docstring). per_class=0 gives DEMO_CLASSES' (HAM_DEMO_CLASSES') counts,
    N > 0 gives N images of every class. Image sides are drawn per image (HAM: per lesion) from
    [min_size, max_size]. extra_test (isic-gpt, per_class=0): DEMO_EXTRA_TEST more images, all test,
    written with a fixed split (train/ and test/ folders; see DEMO_EXTRA_TEST). Same arguments ->
    byte-identical files.
    """
    if extra_test and (layout != "isic-gpt" or per_class):
        raise ValueError("extra_test needs layout isic-gpt and per_class 0 (the default class balance)")
    if layout not in DEMO_LAYOUTS:
        raise ValueError(f"unknown demo layout {layout!r}; choose one of {', '.join(DEMO_LAYOUTS)}")
    if min_size < 16 or max_size < min_size:
        raise ValueError(f"need 16 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    if per_class < 0 or seed < 0:
        raise ValueError(f"seed and per_class must be >= 0, got seed={seed}, per_class={per_class}")
    root = Path(output_dir).expanduser().absolute()
    # The isic-gpt params keep their original keys, so builds made before `layout` existed are reused.
    params = {"version": GENERATOR_VERSION, "seed": int(seed), "per_class": int(per_class),
              "min_size": int(min_size), "max_size": int(max_size)}
    if extra_test:
        params.update(extra_test=DEMO_EXTRA_TEST, split=list(DEMO_SPLIT))
    if layout == "ham10000":
        params.update(layout=layout, ham_version=HAM_GENERATOR_VERSION, shift=HAM_SHIFT)
        params = json.loads(json.dumps(params))    # tuples -> lists, as read back from demo.json
    if _check_existing(root, params):
        return root

    classes = HAM_DEMO_CLASSES if layout == "ham10000" else DEMO_CLASSES
    counts = {name: per_class or n for name, n in classes.items()}
    write = _write_ham10000 if layout == "ham10000" else _write_isic_gpt

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        extra = write(tmp, counts, seed, min_size, max_size, progress, **({"extra_test": True} if extra_test else {}))
        info = {"generator": "harness.data.demo", "layout": layout, "params": params, "counts": counts,
                **extra, "digest": _digest(tmp)}
        (tmp / "demo.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, user_dir_mode())             # mkdtemp makes it 0700
        try:
            if root.is_dir():
                root.rmdir()                       # empty (checked above); fails if filled since
            os.rename(tmp, root)
        except OSError:
            if _check_existing(root, params):      # someone else built the same thing meanwhile
                return root
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
