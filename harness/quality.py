"""`evaluate`: FID, LPIPS and MS-SSIM between a real image set and a second set (paper Table 1).

The paper's two rows (tag `comparison`):
    real_train_vs_real_test     real = the real set's train split, fake = its test split (`--fake ""`)
    real_train_vs_synth_train   real = the real set's train split, fake = every image of a generated
                                set (a dataset folder / manifest, or `runs:/<generate run id>`, whose
                                tag `skindualgen.output_dir` names the folder)
The real set is split exactly as `finetune` splits it (same `test_fraction` and `seed`), so its
dataset digest equals the finetune run's `skindualgen.dataset_digest`.

How each metric is taken (images are read as RGB; aspect ratio is not kept by any resize):
  FID      Inception-v3 2048-d pool features of every image of both sets; torch-fidelity's
           feature extractor resizes the uint8 image to 299x299 itself (its TF1-compatible
           bilinear). FID = ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), computed from the two
           sets' (mu, sigma) by torch-fidelity's `fid_statistics_to_metric`. With fewer images
           than 2048 the covariances are rank-deficient; FID is still defined, but biased upwards
           for small sets (the paper's 1,640-image note applies: compare sets of equal size).
  LPIPS    mean over N pairs (real image i, fake image j), resized to `lpips_size` (PIL bicubic).
  MS-SSIM  mean over the same N pairs, resized to `msssim_size` (PIL bicubic; the default 11-px
           window with 5 scales needs more than 160 px), pytorch-msssim, data range 255.
  The sets are unpaired, so LPIPS and MS-SSIM compare random pairs: N = min(lpips_pairs,
  n_real * n_fake) distinct (i, j) drawn uniformly without replacement from all n_real x n_fake
  pairs with numpy.random.default_rng(seed). N is logged as metric `n_pairs`, the seed is param
  `seed`. Pair lists depend only on (n_real, n_fake, N, seed), not on the images.

Feature extractors (tag `skindualgen.feature_extractor`, `skindualgen.lpips_net`):
  standard  FID: torch-fidelity's `inception-v3-compat` with the 2015-12-05 TF Inception weights
            (`--fid-weights PATH`, else torch-fidelity's file in torch hub's checkpoint cache,
            weights-inception-2015-12-05-6726825d.pth). LPIPS v0.1 on torchvision's ImageNet AlexNet
            (alexnet-owt-7be5be79.pth in torch hub's checkpoint cache) with the package's heads.
  fallback  used when those files are absent (nothing is downloaded): the same InceptionV3
            architecture with every conv/linear weight drawn by a seeded He (kaiming-normal,
            fan_in, ReLU gain) init, biases 0, BatchNorm identity (seed FALLBACK_SEED, fixed, so all
            fallback numbers are comparable with each other); LPIPS with a randomly initialised
            AlexNet (torch seed FALLBACK_SEED, `pnet_rand=True`) and the package's linear heads.
            The default PyTorch init would make activations vanish (FID ~1e-12); He init keeps
            their scale. Such numbers rank sets but are NOT comparable with published FID/LPIPS:
            a loud line says so on stderr and tag `skindualgen.metrics_comparable` is "false".
MS-SSIM has no weights: it is always standard.

Cache: the (mu, sigma) of a real split are stored in `cache_dir` as
`<dataset digest>-<split>-<extractor id>-<key>.npz`, key = sha256 of (digest, split, extractor id,
sha256 of the extractor's weights, feature layer, CACHE_VERSION); any of these changing is a miss, so
standard and fallback statistics never mix. Generated sets are not cached (evaluated once each).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from harness.files import user_file_mode
from harness import tracking
from harness.config import EvaluateConfig
from harness.data.generated import check_same_set, generated_set, read_set
from harness.data.prepare import Prepared, load_prepared, log_dataset_input
from harness.data.records import DataError
from harness.errors import ConfigError
from harness.judges import OLD_CACHE, choose_judges, how_to_add, load_judge
from harness.intervals import Interval, ci_params, interval_metrics, interval_tags, mean_intervals, two_sample_intervals
from harness.schema import (
    METRIC_CAS, METRIC_FID, METRIC_LPIPS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY, METRIC_MS_SSIM, REAL_VS_REAL,
    JUDGE_CLASSIFIER, JUDGE_SEGMENTER, JUDGES_NONE, REAL_VS_SYNTH, STAGE_EVALUATE, TAG_CAS_MODEL, TAG_COMPARABLE,
    TAG_COMPARISON, TAG_CONSISTENCY_MODEL, TAG_DIGEST, TAG_EXTRACTOR, TAG_EXTRACTOR_SHA256, TAG_FAKE_DIGEST,
    TAG_FAKE_SPLIT, TAG_FAKE_STATS_CACHE, TAG_FINETUNE_RUN, TAG_GENERATE_RUN, TAG_JUDGES_FROM, TAG_JUDGES_RUN,
    TAG_LPIPS_NET, TAG_MISSING_PREFIX, TAG_REAL_DIGEST, TAG_REAL_SPLIT, TAG_REAL_STATS_CACHE,
)

FALLBACK_SEED = 0
FEATURE_LAYER = "2048"
CACHE_VERSION = 2               # 2: the features themselves are cached too (the FID interval resamples them)
PIXEL_BUDGET = 1 << 25          # at most ~33 Mpx of source images per Inception batch (memory)
MSSSIM_WIN = 11
NOT_COMPARABLE = ("NOT comparable with published FID/LPIPS: standard weights not found, using the "
                  "seeded random fallback extractor(s) {ids}. Pass --fid-weights PATH / put the files "
                  "in {hub} for standard numbers.")


# ------------------------------------------------------------------------------------------------
# Extractors
# ------------------------------------------------------------------------------------------------

@dataclass
class FidExtractor:
    net: torch.nn.Module       # torch-fidelity FeatureExtractorInceptionV3: uint8 Bx3xHxW -> (B, 2048)
    id: str                    # "standard:inception-v3-compat" | "fallback:inception-random-he-seed0"
    weights_sha256: str        # of the loaded state dict (part of the cache key)

    @property
    def standard(self) -> bool:
        return self.id.startswith("standard:")


@dataclass
class LpipsNet:
    net: torch.nn.Module       # lpips.LPIPS: two Bx3xHxW in [-1, 1] -> (B, 1, 1, 1)
    id: str                    # "standard:lpips-alex-v0.1" | "fallback:lpips-alex-random-seed0"

    @property
    def standard(self) -> bool:
        return self.id.startswith("standard:")


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub's `load_state_dict_from_url` keeps the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _inception_class():
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class HeInitInceptionV3(FeatureExtractorInceptionV3):
        """torch-fidelity's InceptionV3 whose weight loading is replaced by a seeded He init."""

        def __init__(self, seed: int):
            self._he_seed = seed
            empty = io.BytesIO()
            torch.save({}, empty)
            empty.seek(0)   # torch-fidelity loads "weights" from this; load_state_dict ignores them
            super().__init__("inception-v3-compat", [FEATURE_LAYER], feature_extractor_weights_path=empty)

        def load_state_dict(self, state_dict, strict=True, assign=False):
            if state_dict:
                raise ValueError("the fallback extractor takes no weights")
            g = torch.Generator().manual_seed(self._he_seed)
            for m in self.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=g)
                    if m.bias is not None:
                        torch.nn.init.zeros_(m.bias)

    return FeatureExtractorInceptionV3, HeInitInceptionV3


def _state_sha256(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in net.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build_fid_extractor(weights: str | os.PathLike = "", fallback_seed: int = FALLBACK_SEED) -> FidExtractor:
    """torch-fidelity's inception-v3-compat with standard weights (`weights`, else torch-fidelity's
    file in the torch hub cache), or, when neither is there, the seeded He-init fallback."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
    standard_cls, fallback_cls = _inception_class()
    path = Path(weights).expanduser() if weights else hub_checkpoint(URL_INCEPTION_V3)
    if weights and not path.is_file():
        raise FileNotFoundError(f"{path}: --fid-weights file not found (torch-fidelity's "
                                f"{os.path.basename(URL_INCEPTION_V3)})")
    if path.is_file():
        try:
            net = standard_cls("inception-v3-compat", [FEATURE_LAYER], feature_extractor_weights_path=str(path))
        except Exception as e:
            raise DataError(f"{path}: not torch-fidelity inception-v3-compat weights "
                            f"({type(e).__name__}: {str(e)[:300]})") from e
        ext_id = "standard:inception-v3-compat"
    else:
        net = fallback_cls(fallback_seed)
        ext_id = f"fallback:inception-random-he-seed{fallback_seed}"
    return FidExtractor(net=net.eval(), id=ext_id, weights_sha256=_state_sha256(net))


def build_lpips(fallback_seed: int = FALLBACK_SEED) -> LpipsNet:
    """LPIPS v0.1 (AlexNet) with ImageNet weights from the torch hub cache if there, else with a
    seeded random AlexNet (`pnet_rand=True`); the linear heads ship with the lpips package."""
    import lpips
    from torchvision.models import AlexNet_Weights
    standard = hub_checkpoint(AlexNet_Weights.IMAGENET1K_V1.url).is_file()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore", UserWarning)        # torchvision's `pretrained=` deprecation
        torch.manual_seed(fallback_seed)
        net = lpips.LPIPS(net="alex", version="0.1", pnet_rand=not standard, verbose=False)
    ext_id = "standard:lpips-alex-v0.1" if standard else f"fallback:lpips-alex-random-seed{fallback_seed}"
    return LpipsNet(net=net.eval(), id=ext_id)


def extractor_tags(extractor: FidExtractor, lpips_net: LpipsNet) -> dict[str, str]:
    """The run tags saying which FID and LPIPS networks measured it, and whether the numbers are
    comparable with published ones (both standard)."""
    return {TAG_EXTRACTOR: extractor.id, TAG_EXTRACTOR_SHA256: extractor.weights_sha256[:16],
            TAG_LPIPS_NET: lpips_net.id, TAG_COMPARABLE: str(extractor.standard and lpips_net.standard).lower()}


def warn_if_fallback(*extractors) -> bool:
    """Print the loud stderr line when any extractor is the fallback; True if all are standard."""
    fallback = [e.id for e in extractors if not e.standard]
    if fallback:
        line = NOT_COMPARABLE.format(ids=", ".join(fallback), hub=Path(torch.hub.get_dir()) / "checkpoints")
        print(f"\n{'!' * 100}\n{line}\n{'!' * 100}", file=sys.stderr, flush=True)
    return not fallback


# ------------------------------------------------------------------------------------------------
# FID
# ------------------------------------------------------------------------------------------------

def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from e


def extract_features(extractor: FidExtractor, paths: list[Path], batch_size: int = 32,
                     progress: bool = True, desc: str = "features") -> np.ndarray:
    """(N, 2048) float64 Inception pool features, in the order of `paths`. Images of one size are
    batched together and given as uint8 to torch-fidelity's extractor, which resizes to 299 itself."""
    paths = [Path(p) for p in paths]
    sizes = [_image_size(p) for p in paths]
    order = sorted(range(len(paths)), key=lambda k: (sizes[k], k))
    batches, current = [], []
    for k in order:
        w, h = sizes[k]
        fits = current and sizes[current[0]] == (w, h) and len(current) < batch_size \
            and (len(current) + 1) * w * h <= PIXEL_BUDGET
        if current and not fits:
            batches.append(current)
            current = []
        current.append(k)
    if current:
        batches.append(current)
    out = np.zeros((len(paths), 2048), np.float64)
    with torch.inference_mode(), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress,
                                      leave=False) as bar:
        for batch in batches:
            x = torch.stack([torch.from_numpy(np.array(_open_rgb(paths[k]))).permute(2, 0, 1)
                             for k in batch])
            (features,) = extractor.net(x)
            out[batch] = features.double().numpy()
            bar.update(len(batch))
    return out


def feature_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """{"mu": (d,), "sigma": (d, d)} in float64 (torch-fidelity's `fid_features_to_statistics`)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"FID needs at least 2 images per set, got features of shape {features.shape}")
    return fid_features_to_statistics(torch.from_numpy(features))


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)) by torch-fidelity's `fid_statistics_to_metric`."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


# ------------------------------------------------------------------------------------------------
# 95 % intervals (beyond the paper): the real and the compared images resampled, harness/intervals.py
# ------------------------------------------------------------------------------------------------

FID_RESAMPLES = 1000            # each costs an eigendecomposition of an n_real x n_real matrix


class ResampledFid:
    """FID of resampled sets from the two sets' features, through their Gram matrices: with image
    weights w (how often a resample drew each image), the weighted sample covariances are
    S = Aᵀ A, A = diag(√w) (F − μ) / √(Σw − 1), and Tr((S_a S_b)^½) is the sum of the singular values
    of A_a A_bᵀ (n_a x n_b), so no d x d square root is needed. With w = 1 it is the FID formula itself
    (tests/test_quality.py checks it against torch-fidelity's)."""

    def __init__(self, fa: np.ndarray, fb: np.ndarray):
        fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
        self.gaa, self.gbb, self.gab = fa @ fa.T, fb @ fb.T, fa @ fb.T                 # (n_a, n_a) ...

    def one(self, wa: np.ndarray, wb: np.ndarray) -> float:
        sa, sb = wa.sum(), wb.sum()
        ga_w, gb_w = self.gaa @ wa / sa, self.gbb @ wb / sb                            # f_i · μ_a, f_j · μ_b
        mu_aa, mu_bb, mu_ab = wa @ ga_w / sa, wb @ gb_w / sb, wa @ self.gab @ wb / (sa * sb)
        trace_a = (wa @ np.diag(self.gaa) - sa * mu_aa) / (sa - 1)
        trace_b = (wb @ np.diag(self.gbb) - sb * mu_bb) / (sb - 1)
        # (f_i − μ_a) · (f_j − μ_b) for every pair, then the weights
        centred = self.gab - (self.gab @ wb / sb)[:, None] - (wa @ self.gab / sa)[None, :] + mu_ab
        m = np.sqrt(wa)[:, None] * centred * np.sqrt(wb)[None, :] / np.sqrt((sa - 1) * (sb - 1))
        small = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)).sum()
        return float(mu_aa + mu_bb - 2 * mu_ab + trace_a + trace_b - 2 * trace_sqrt)

    def __call__(self, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
        """(B, n_a), (B, n_b) draw counts -> (1, B) FID of each resample."""
        return np.array([[self.one(a, b) for a, b in zip(wa, wb)]])


def fid_interval(real_features: np.ndarray, fake_features: np.ndarray) -> Interval:
    """The FID's 95 % interval: both sets' images resampled (FID_RESAMPLES). A resample repeats images,
    which FID reads as a less diverse set, so resampled FIDs sit well above the value of the sets
    themselves (FID's small-sample bias); the percentile interval is therefore moved back by the
    bootstrap's bias estimate (bias-corrected percentile): its width is the resampling spread."""
    [iv] = two_sample_intervals(ResampledFid(real_features, fake_features), len(real_features), len(fake_features),
                                1, resamples=FID_RESAMPLES, bias_corrected=True, bounds=(0.0, np.inf))
    return iv


def pair_intervals(pairs: PairScores, n_real: int, n_fake: int) -> dict[str, Interval]:
    """LPIPS and MS-SSIM intervals: the real and the fake images resampled; a pair counts as often as
    both its images were drawn (a resample drawing none of the pairs keeps the plain mean)."""
    values = np.stack([pairs.lpips, pairs.ms_ssim])                                   # (2, N pairs)

    def statistic(wa, wb):
        w = wa[:, pairs.real] * wb[:, pairs.fake]                                      # (B, N pairs)
        total = w.sum(axis=1)
        means = (values @ w.T) / np.where(total > 0, total, 1.0)                       # (2, B)
        return np.where(total > 0, means, values.mean(axis=1, keepdims=True))

    ivs = two_sample_intervals(statistic, n_real, n_fake, 2, bounds=[(0.0, np.inf), (-1.0, 1.0)])
    return {METRIC_LPIPS: ivs[0], METRIC_MS_SSIM: ivs[1]}


def quality_intervals(real_features, fake_features, pairs: PairScores, n_real: int, n_fake: int,
                      per_image: dict[str, tuple[np.ndarray, list[str]]]) -> dict[str, Interval]:
    """Every Table 1 metric's interval: FID, LPIPS, MS-SSIM (both sets resampled), and the judges'
    CAS, mask consistency and mask non-empty (the compared set's images resampled, a lesion's together)."""
    out = {METRIC_FID: fid_interval(real_features, fake_features), **pair_intervals(pairs, n_real, n_fake)}
    for key, (values, groups) in per_image.items():
        [out[key]] = mean_intervals(np.asarray(values, np.float64)[None, :], groups, bounds=(0.0, 1.0))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")


def stats_cache_path(cache_dir: str | os.PathLike, digest: str, split: str, extractor: FidExtractor) -> Path:
    key = hashlib.sha256(json.dumps({"digest": digest, "split": split, "extractor": extractor.id,
                                     "weights_sha256": extractor.weights_sha256, "layer": FEATURE_LAYER,
                                     "version": CACHE_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{digest}-{split}-{_slug(extractor.id)}-{key}.npz"


def _save_stats(path: Path, stats: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stats-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=stats["mu"], sigma=stats["sigma"], features=stats["features"], meta=json.dumps(meta))
        os.chmod(tmp, user_file_mode())       # mkstemp makes 0600; a cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ImageSet:
    paths: list[Path]
    digest: str                # dataset digest of the set it comes from
    split: str                 # "train" | "test" | "all"
    cacheable: bool            # real splits: (mu, sigma) cached by digest + split + extractor
    source: str                # what was given, for messages
    samples: list = field(default_factory=list)   # the records (label, mask) behind `paths`, same order

    def __len__(self) -> int:
        return len(self.paths)


def set_statistics(images: ImageSet, extractor: FidExtractor, cache_dir: str | os.PathLike | None,
                   batch_size: int = 32, progress: bool = True) -> tuple[dict, bool]:
    """{"mu", "sigma", "features" (N, d)} of a set and whether they came from the cache (only cacheable
    sets are cached)."""
    path = stats_cache_path(cache_dir, images.digest, images.split, extractor) \
        if images.cacheable and cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                return {"mu": z["mu"], "sigma": z["sigma"], "features": z["features"]}, True
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:   # e.g. a half-copied cache
            print(f"warning: {path}: unreadable cached statistics ({e}); recomputing", file=sys.stderr)
    features = extract_features(extractor, images.paths, batch_size, progress, desc=f"FID features ({images.split})")
    stats = {**feature_statistics(features), "features": np.asarray(features, np.float32)}
    if path is not None:
        _save_stats(path, stats, {"digest": images.digest, "split": images.split, "extractor": extractor.id,
                                  "weights_sha256": extractor.weights_sha256, "n_images": len(images),
                                  "source": images.source, "version": CACHE_VERSION})
    return stats, False


# ------------------------------------------------------------------------------------------------
# LPIPS and MS-SSIM over seeded random pairs
# ------------------------------------------------------------------------------------------------

def load_resized(paths: list[Path], size: int) -> np.ndarray:
    """(N, size, size, 3) uint8, PIL bicubic, aspect ratio not kept."""
    return np.stack([np.asarray(_open_rgb(Path(p)).resize((size, size), Image.BICUBIC)) for p in paths])


def _nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) array or float/uint8 (N, 3, H, W) tensor -> float32 (N, 3, H, W) in [0, 255]."""
    if isinstance(images, np.ndarray):
        images = torch.tensor(images).permute(0, 3, 1, 2)
    return images.float()


def lpips_distance(net: LpipsNet, a, b) -> np.ndarray:
    """Per-pair LPIPS between two equal-shape batches of uint8 images (N, H, W, 3) (0 = identical)."""
    with torch.inference_mode():
        d = net.net(_nchw(a) / 127.5 - 1.0, _nchw(b) / 127.5 - 1.0)
    return d.reshape(-1).double().numpy()


def ms_ssim_score(a, b) -> np.ndarray:
    """Per-pair MS-SSIM (pytorch-msssim, window 11, data range 255) of two equal-shape batches of uint8
    images (N, H, W, 3), sides > 160 px (1 = identical)."""
    from pytorch_msssim import ms_ssim
    a, b = _nchw(a), _nchw(b)
    if min(a.shape[-2:]) <= (MSSSIM_WIN - 1) * 16:
        raise ValueError(f"MS-SSIM needs images larger than {(MSSSIM_WIN - 1) * 16} px per side with its "
                         f"default {MSSSIM_WIN}-px window and 5 scales; got {tuple(a.shape[-2:])} "
                         "(raise msssim_size)")
    with torch.inference_mode():
        return ms_ssim(a, b, data_range=255, size_average=False, win_size=MSSSIM_WIN).double().numpy()


def sample_pairs(n_real: int, n_fake: int, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """min(n_pairs, n_real*n_fake) distinct (i, j) pairs, uniformly without replacement, seeded."""
    if n_real < 1 or n_fake < 1 or n_pairs < 1:
        raise ValueError(f"need images on both sides and n_pairs >= 1 (got {n_real}, {n_fake}, {n_pairs})")
    total = n_real * n_fake
    flat = np.random.default_rng(seed).choice(total, size=min(n_pairs, total), replace=False)
    return flat // n_fake, flat % n_fake


@dataclass
class PairScores:
    real: np.ndarray          # (N,) index of each pair's real image
    fake: np.ndarray          # (N,) index of its fake image
    lpips: np.ndarray         # (N,) per-pair LPIPS
    ms_ssim: np.ndarray       # (N,) per-pair MS-SSIM

    def summary(self) -> dict[str, float]:
        return {METRIC_LPIPS: float(self.lpips.mean()), "lpips_std": float(self.lpips.std()),
                METRIC_MS_SSIM: float(self.ms_ssim.mean()), "ms_ssim_std": float(self.ms_ssim.std()),
                "n_pairs": len(self.real)}


def paired_metrics(real_paths: list[Path], fake_paths: list[Path], n_pairs: int, seed: int,
                   lpips_net: LpipsNet, lpips_size: int = 256, msssim_size: int = 256,
                   batch_size: int = 32, progress: bool = True) -> dict[str, float]:
    """LPIPS and MS-SSIM means (and standard deviations) over the seeded random pairs."""
    return pair_scores(real_paths, fake_paths, n_pairs, seed, lpips_net, lpips_size, msssim_size, batch_size,
                       progress).summary()


def pair_scores(real_paths: list[Path], fake_paths: list[Path], n_pairs: int, seed: int,
                lpips_net: LpipsNet, lpips_size: int = 256, msssim_size: int = 256,
                batch_size: int = 32, progress: bool = True) -> PairScores:
    """LPIPS and MS-SSIM of every seeded random pair (real image i, fake image j)."""
    i, j = sample_pairs(len(real_paths), len(fake_paths), n_pairs, seed)
    ui, uj = np.unique(i), np.unique(j)
    out: dict[str, list] = {METRIC_LPIPS: [], METRIC_MS_SSIM: []}
    for name, size in ((METRIC_LPIPS, lpips_size), (METRIC_MS_SSIM, msssim_size)):
        real = dict(zip(ui.tolist(), load_resized([real_paths[k] for k in ui], size)))
        fake = dict(zip(uj.tolist(), load_resized([fake_paths[k] for k in uj], size)))
        for start in tqdm(range(0, len(i), batch_size), desc=name, disable=not progress, leave=False):
            a = np.stack([real[k] for k in i[start:start + batch_size]])
            b = np.stack([fake[k] for k in j[start:start + batch_size]])
            out[name].append(lpips_distance(lpips_net, a, b) if name == METRIC_LPIPS else ms_ssim_score(a, b))
    return PairScores(i, j, np.concatenate(out[METRIC_LPIPS]), np.concatenate(out[METRIC_MS_SSIM]))


# ------------------------------------------------------------------------------------------------
# Beyond the paper: CAS and mask consistency (harness.downstream.reference)
# ------------------------------------------------------------------------------------------------

def judge(judges_run, prepared: Prepared, fake: ImageSet,
          progress: bool = True) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, list[str]]]]:
    """`cas`, `cas/<class>` (the judging classifier's accuracy on the set's labels) and
    `mask_consistency`, `mask_consistency/<class>`, `mask_nonempty` of the compared set (a generated set
    or the real test split), by the models of `judges_run` (harness/judges.py; trained on the real train
    split). Classes the real data lacks are an error; samples without a mask are left out of consistency.
    Also returns, per metric, (the per-image values it is the mean of, their images' groups)."""
    from harness.downstream.reference import cas, mask_consistency
    classes = prepared.dataset.split("train").classes
    unknown = sorted({s.label for s in fake.samples} - set(classes))
    if unknown:
        raise DataError(f"{fake.source}: class(es) {unknown} are not classes of the real train split {classes}; "
                        "CAS needs the generated set's classes to be the real ones")
    out: dict[str, float] = {}
    per_image: dict[str, tuple[np.ndarray, list[str]]] = {}
    clf = load_judge(judges_run, JUDGE_CLASSIFIER)
    if clf is not None:
        scores, correct = cas(clf, fake.samples, per_image=True)
        out.update(scores)
        per_image[METRIC_CAS] = (correct, [s.group for s in fake.samples])
        mlflow.set_tag(TAG_CAS_MODEL, clf.info["model"])
    with_mask = [s for s in fake.samples if s.mask is not None]
    seg = load_judge(judges_run, JUDGE_SEGMENTER)
    if seg is not None and with_mask:
        scores, dice, nonempty = mask_consistency(seg, with_mask)
        out.update(scores)
        groups = [s.group for s in with_mask]
        per_image.update({METRIC_MASK_CONSISTENCY: (dice, groups), METRIC_MASK_NONEMPTY: (nonempty, groups)})
        mlflow.set_tag(TAG_CONSISTENCY_MODEL, seg.info["model"])
    run_id = judges_run.info.run_id
    why = {METRIC_CAS: f"judges run {run_id} has no CAS classifier" if clf is None else "",
           METRIC_MASK_CONSISTENCY: (f"judges run {run_id} has no consistency segmenter" if seg is None
                                     else "" if with_mask else f"{fake.source}: no image of the set has a mask")}
    why[METRIC_MASK_NONEMPTY] = why[METRIC_MASK_CONSISTENCY]
    mlflow.set_tags({TAG_MISSING_PREFIX + m: reason for m, reason in why.items() if reason})
    return out, per_image


JUDGED_METRICS = (METRIC_CAS, METRIC_MASK_CONSISTENCY, METRIC_MASK_NONEMPTY)


def pick_judges(cfg: EvaluateConfig, digest: str, experiment: str | None):
    """The judges run for this evaluate (given, found or none) and, without one, the line saying why
    (with the command that would add CAS and mask consistency)."""
    run, how = choose_judges(cfg.judges, digest, cfg.judges_profile, experiment)
    if run is not None:
        return run, how, ""
    if how == JUDGES_NONE and cfg.judges.strip().lower() == "none":
        return None, how, "not asked for (--judges none)"
    why = (f"no FINISHED judges run for dataset digest {digest} and judges profile {cfg.judges_profile}; "
           f"add CAS and mask consistency with `{how_to_add(cfg.judges_profile, cfg.real, experiment)}`, "
           "then evaluate again")
    if Path(OLD_CACHE).is_dir() and any(Path(OLD_CACHE).glob("*.pt")):
        why += f" (the judges cached in {OLD_CACHE} by an older version are no longer read)"
    return None, how, why


# ------------------------------------------------------------------------------------------------
# Inputs and the stage
# ------------------------------------------------------------------------------------------------

def resolve_fake(spec: str) -> tuple[Path, dict[str, str], mlflow.entities.Run | None]:
    """A dataset folder / manifest, or `runs:/<generate run id>` -> (path, lineage tags, the run)."""
    path, run = generated_set(spec)
    if run is None:
        return path, {}, None
    tags = {TAG_GENERATE_RUN: run.info.run_id}
    if run.data.tags.get(TAG_FINETUNE_RUN):
        tags[TAG_FINETUNE_RUN] = run.data.tags[TAG_FINETUNE_RUN]
    return path, tags, run


def load_fake_set(path: Path, progress: bool = True) -> ImageSet:
    """Every image of a dataset folder / manifest (a generated set is all split=train), with its digest."""
    dataset, digest = read_set(path, progress)
    return ImageSet(paths=[s.image for s in dataset.samples], digest=digest,
                    split="all", cacheable=False, source=str(path), samples=list(dataset.samples))


def real_split(prepared: Prepared, split: str) -> ImageSet:
    part = prepared.dataset.split(split)
    return ImageSet(paths=[s.image for s in part.samples], digest=prepared.digest, split=split,
                    cacheable=True, source=str(prepared.dataset.root), samples=list(part.samples))


def resolve_comparison(cfg: EvaluateConfig) -> str:
    implied = REAL_VS_SYNTH if cfg.fake else REAL_VS_REAL
    if cfg.comparison in (REAL_VS_REAL, REAL_VS_SYNTH) and cfg.comparison != implied:
        raise ConfigError(f"--comparison {cfg.comparison} does not match --fake {cfg.fake!r} "
                         f"(that is {implied}: fake '' = the real test split)")
    return cfg.comparison or implied


def check_config(cfg: EvaluateConfig) -> None:
    if cfg.msssim_size <= (MSSSIM_WIN - 1) * 16:
        raise ConfigError(f"msssim_size must be > {(MSSSIM_WIN - 1) * 16} (MS-SSIM's 11-px window over 5 "
                         f"scales), got {cfg.msssim_size}")
    if cfg.lpips_size < 32 or cfg.lpips_pairs < 1 or cfg.batch_size < 1:
        raise ConfigError("lpips_size must be >= 32, lpips_pairs and batch_size >= 1")


def evaluate(cfg: EvaluateConfig, experiment: str | None = None, progress: bool = True) -> str:
    """FID, LPIPS, MS-SSIM of the real train split against `cfg.fake` (or the real test split);
    logs one `evaluate` run and returns its id. Inputs are checked before the run starts."""
    check_config(cfg)
    tracking.setup(experiment)
    comparison = resolve_comparison(cfg)
    prepared = load_prepared(cfg.real, "auto", cfg.test_fraction, cfg.seed, progress=progress)
    real = real_split(prepared, "train")
    lineage: dict[str, str] = {}
    if cfg.fake:
        fake_path, lineage, gen_run = resolve_fake(cfg.fake)
        fake = load_fake_set(fake_path, progress)
        if gen_run is not None:
            check_same_set(gen_run, fake_path, fake.digest)
        trained_on = gen_run.data.tags.get(TAG_DIGEST) if gen_run else None
        if trained_on and trained_on != prepared.digest:
            print(f"warning: the generated set's model was trained on dataset digest {trained_on}, but the "
                  f"real set here has digest {prepared.digest} (other data, split or seed)", file=sys.stderr)
    else:
        fake = real_split(prepared, "test")
    for s, what in ((real, f"{prepared.dataset.root} (train split)"),
                    (fake, f"{fake.source} ({fake.split})")):
        if len(s) < 2:
            raise DataError(f"{what}: {len(s)} image(s); FID needs at least 2 per set")

    judges_run, judges_from, no_judges = pick_judges(cfg, prepared.digest, experiment)
    if no_judges:
        print(f"evaluate: no CAS / mask consistency: {no_judges}", file=sys.stderr)
    elif progress:
        print(f"evaluate: CAS and mask consistency by the judges of run {judges_run.info.run_id} ({judges_from})")
    extractor = build_fid_extractor(cfg.fid_weights)
    lpips_net = build_lpips()
    warn_if_fallback(extractor, lpips_net)
    tags = {TAG_COMPARISON: comparison, TAG_REAL_DIGEST: real.digest, TAG_FAKE_DIGEST: fake.digest,
            TAG_REAL_SPLIT: real.split, TAG_FAKE_SPLIT: fake.split, **extractor_tags(extractor, lpips_net),
            TAG_JUDGES_FROM: judges_from, **lineage,
            **({TAG_JUDGES_RUN: judges_run.info.run_id} if judges_run is not None else {})}
    with tracking.stage_run(STAGE_EVALUATE, cfg, prepared.digest, experiment,
                            run_name=f"evaluate-{comparison}", extra_tags=tags) as run:
        log_dataset_input(prepared, context="evaluate")
        real_stats, real_hit = set_statistics(real, extractor, cfg.cache_dir, cfg.batch_size, progress)
        fake_stats, fake_hit = set_statistics(fake, extractor, cfg.cache_dir, cfg.batch_size, progress)
        metrics = {METRIC_FID: frechet_distance(real_stats, fake_stats)}
        pairs = pair_scores(real.paths, fake.paths, cfg.lpips_pairs, cfg.seed, lpips_net, cfg.lpips_size,
                            cfg.msssim_size, cfg.batch_size, progress)
        metrics.update(pairs.summary())
        metrics.update({"n_real": len(real), "n_fake": len(fake)})
        judged, per_image = judge(judges_run, prepared, fake, progress) if judges_run is not None else ({}, {})
        metrics.update(judged)
        if judges_run is None:
            mlflow.set_tags({TAG_MISSING_PREFIX + m: no_judges for m in JUDGED_METRICS})
        ivs = quality_intervals(real_stats["features"], fake_stats["features"], pairs, len(real), len(fake), per_image)
        metrics.update(interval_metrics("", ivs))
        mlflow.set_tags(interval_tags("", ivs))
        mlflow.log_params({**ci_params(), "fid_ci_resamples": FID_RESAMPLES})
        fake_cache = "hit" if fake_hit else ("miss" if fake.cacheable else "off")
        mlflow.set_tags({TAG_REAL_STATS_CACHE: "hit" if real_hit else "miss", TAG_FAKE_STATS_CACHE: fake_cache})
        mlflow.log_metrics(metrics)
        return run.info.run_id


__all__ = [
    "FALLBACK_SEED",
    "FidExtractor",
    "ImageSet",
    "LpipsNet",
    "build_fid_extractor",
    "build_lpips",
    "evaluate",
    "extract_features",
    "extractor_tags",
    "feature_statistics",
    "frechet_distance",
    "load_fake_set",
    "load_resized",
    "lpips_distance",
    "ms_ssim_score",
    "paired_metrics",
    "pair_scores",
    "quality_intervals",
    "ResampledFid",
    "fid_interval",
    "resolve_fake",
    "sample_pairs",
    "set_statistics",
    "stats_cache_path",
]



def summary(run_id: str) -> str:
    """What `skindualgen evaluate` prints: the comparison, the set sizes, the metrics, the extractors."""
    run = mlflow.get_run(run_id)
    m, tags = run.data.metrics, run.data.tags
    lines = [f"evaluate run {run_id} ({tags[TAG_COMPARISON]}, {int(m['n_real'])} real vs {int(m['n_fake'])} "
             f"images, {int(m['n_pairs'])} LPIPS/MS-SSIM pairs)"]
    lines += [f"{name:8s} {m[name]:.4f}" for name in (METRIC_FID, METRIC_LPIPS, METRIC_MS_SSIM, METRIC_CAS,
                                                       METRIC_MASK_CONSISTENCY)
              if name in m]          # CAS / consistency only with a judges run (else the run's tags say why)
    status = "standard" if tags[TAG_COMPARABLE] == "true" else "FALLBACK, NOT comparable with published numbers"
    lines.append(f"feature extractors: {tags[TAG_EXTRACTOR]}, {tags[TAG_LPIPS_NET]} ({status})")
    return "\n".join(lines)
