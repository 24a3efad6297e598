"""The base model: one code path for a hub id, a local diffusers folder, or the shipped "tiny" model.

    base = load_base("stabilityai/stable-diffusion-2-base")   # hub (or the local HF cache offline)
    base = load_base("/models/sd2-base")                       # any StableDiffusionPipeline folder
    base = load_base("tiny")                                   # harness/assets/tiny-sd2 (offline demo)

All three resolve to a folder, then go through the same from_pretrained calls. The scheduler is always
DDIM built from the folder's scheduler config, so the prediction type (epsilon for SD2-base, v for the
768-px SD2) comes from the checkpoint. All weights come back frozen (requires_grad False); training
code turns on what it trains (LoRA, the VAE's mask layers).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from harness.errors import HarnessError
from harness.hub import hf_cache_place, hf_hub_cache, offline

TINY_BASE_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny-sd2"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# What we fetch from a hub repo: the diffusers folders only, safetensors only. SD2 repos also hold
# multi-GB .ckpt / .bin / fp16 files that would otherwise be downloaded too.
HUB_ALLOW_PATTERNS = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "text_encoder/*.json", "text_encoder/model.safetensors",
    "unet/*.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/*.json", "vae/diffusion_pytorch_model.safetensors",
]


class BaseModelError(HarnessError, RuntimeError):
    """The base model could not be found or fetched; the message says which and what to do."""


@dataclass
class BaseModel:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: DDIMScheduler
    info: dict = field(default_factory=dict)   # model_id, resolved_path, revision, prediction_type

    def components(self) -> dict:
        return {name: getattr(self, name) for name in COMPONENTS}


def folder_digest(folder: Path) -> str:
    """sha256 over model_index.json and every file of the five component folders (names + bytes)."""
    folder = Path(folder)
    files = [folder / "model_index.json"]
    for sub in COMPONENTS:
        files += sorted(p for p in (folder / sub).rglob("*") if p.is_file())
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def resolve_base(spec: str, revision: str = "") -> tuple[Path, str]:
    """Map "tiny" / a local folder / a hub id to (folder, revision)."""
    if spec == "tiny":
        if not (TINY_BASE_DIR / "model_index.json").is_file():
            raise BaseModelError(
                f"The tiny base model is missing from {TINY_BASE_DIR}. "
                "Build it with `skindualgen build-tiny-base` (a few minutes on CPU, no network).")
        return TINY_BASE_DIR, folder_digest(TINY_BASE_DIR)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(f"{path} is a folder but not a diffusers pipeline folder "
                                 "(no model_index.json).")
        return path.resolve(), folder_digest(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise BaseModelError(f"Base model {spec!r}: no such folder, and not a hub id (owner/name).")
    from huggingface_hub import snapshot_download
    try:
        folder = Path(snapshot_download(spec, revision=revision or None, allow_patterns=HUB_ALLOW_PATTERNS,
                                        cache_dir=hf_hub_cache(), local_files_only=offline()))
    except Exception as err:  # offline without a cache entry, unknown repo, gated repo, no network...
        raise BaseModelError(
            f"Could not fetch base model {spec!r} (revision {revision or 'main'}) from the Hugging Face "
            f"hub or its local cache: {type(err).__name__}: {str(err).rstrip('.')}. With HF_HUB_OFFLINE=1 the model must "
            f"already be in the cache, in {hf_cache_place(spec, revision)}; `hf download {spec}"
            f"{' --revision ' + revision if revision else ''}` puts it there (HF_HOME or HF_HUB_CACHE choose "
            "the cache). Or pass a local folder, or 'tiny'.") from err
    return folder, folder.name   # the snapshot folder is named after the commit hash


def load_base(spec: str, revision: str = "", dtype=torch.float32) -> BaseModel:
    """Load the five SD components from "tiny", a local folder or a hub id (same calls for all)."""
    folder, resolved_revision = resolve_base(spec, revision)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(folder, subfolder="scheduler"))
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
        model.eval()
    info = {
        "model_id": spec,
        "resolved_path": str(folder),
        "revision": resolved_revision,
        "prediction_type": scheduler.config.prediction_type,
    }
    return BaseModel(unet, vae, text_encoder, tokenizer, scheduler, info)


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str]) -> torch.Tensor:
    """Text embeddings (B, 77, D) exactly as StableDiffusionPipeline.encode_prompt computes them."""
    tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt")
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(text_encoder.device)
    return text_encoder(tokens.input_ids.to(text_encoder.device), attention_mask=attention_mask)[0]


class PromptCache:
    """Prompt text -> embedding, computed once (the text encoder is frozen in this project).

    cache = PromptCache(tokenizer, text_encoder); emb = cache(["a ... melanoma ...", ...])  # (B, 77, D)
    Missing prompts are encoded together in one batch, without gradients.
    """

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._embeddings: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeddings]
        if missing:
            embeddings = encode_prompts(self.tokenizer, self.text_encoder, missing)
            self._embeddings.update(zip(missing, embeddings))
        return torch.stack([self._embeddings[p] for p in prompts])

    def __len__(self) -> int:
        return len(self._embeddings)
