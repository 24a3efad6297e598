"""One dataclass per stage. Defaults are the paper's values; `--profile demo` only shrinks sizes.

Every field is logged as an MLflow param (see harness.tracking.config_params), so a run in the UI
shows the whole configuration that produced it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

PROMPT_TEMPLATE = "a dermoscopic lesion photo of {class_name} for skin cancer diagnosis"
SEED = 42


@dataclass
class PrepareConfig:
    data_dir: str = ""              # "" = the embedded demo dataset
    layout: str = "auto"            # auto | isic-gpt | ham10000 | manifest
    test_fraction: float = 0.176    # paper: ~1,640 train of 1,990 images (350 test)
    seed: int = SEED
    output_dir: str = "prepared"    # manifest goes to <output_dir>/<dataset name>/manifest.csv


@dataclass
class DemoDataConfig:
    output_dir: str = "data/demo"
    seed: int = 0
    per_class: int = 0              # 0 = the HAM10000-like class balance (~140 images in all)
    min_size: int = 64
    max_size: int = 128


@dataclass
class FinetuneConfig:
    data_dir: str = ""
    base_model: str = "stabilityai/stable-diffusion-2-base"
    revision: str = ""              # hub revision ("" = main); the resolved commit is logged
    resolution: int = 256           # LANCZOS for images, nearest for masks
    train_batch_size: int = 4
    epochs: int = 100
    max_train_steps: int = 0        # 0 = epochs * steps_per_epoch
    learning_rate: float = 1e-4
    adam_weight_decay: float = 1e-2
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    lora_rank: int = 4
    lora_alpha: float = 4.0
    lora_targets: str = "to_q,to_k,to_v,to_out.0"
    lambda_diffusion: float = 1.0
    lambda_bce: float = 1.0
    lambda_dice: float = 1.0
    dice_smooth: float = 1.0
    train_mask_channels: bool = True   # the widened VAE mask weights train with LoRA (see README)
    caption_source: str = "template"   # template | description
    prompt_template: str = PROMPT_TEMPLATE
    augment: bool = True
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"     # no | fp16 | bf16 (LoRA params stay fp32)
    gradient_checkpointing: bool = False
    num_workers: int = 0
    validation_epochs: int = 10     # log seeded image+mask grids every N epochs
    validation_steps: int = 20      # inference steps for validation grids
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 3
    resume_from_checkpoint: str = ""   # "" | latest | path
    output_dir: str = "outputs/finetune"
    log_every: int = 1
    test_fraction: float = 0.176
    seed: int = SEED


@dataclass
class GenerateConfig:
    model_uri: str = ""
    per_class: int = 0
    balance: bool = False
    classes: str = ""               # comma list; "" = all classes the model knows
    num_inference_steps: int = 45
    guidance_scale: float = 1.22
    resolution: int = 512
    batch_size: int = 8
    mask_threshold: float = 0.5
    settings_from_run: str = ""     # a tune run id: take steps/guidance from it
    output_dir: str = "outputs/generate"
    seed: int = SEED


def field_names(cfg_cls) -> list[str]:
    return [f.name for f in fields(cfg_cls)]


__all__ = [
    "PROMPT_TEMPLATE", "SEED", "PrepareConfig", "DemoDataConfig", "FinetuneConfig", "GenerateConfig",
    "field_names", "field", "PROFILES", "with_profile",
]


# `--profile demo` shrinks sizes and steps so a stage runs in minutes on 2 CPU cores; the method is
# the same. An option given explicitly always wins over the profile.
PROFILES: dict[str, dict[str, dict]] = {
    "finetune": {
        "paper": {},
        "demo": {"base_model": "tiny", "resolution": 64, "max_train_steps": 300, "validation_epochs": 5,
                 "validation_steps": 20, "checkpointing_steps": 100},
    },
    "generate": {
        "paper": {},
        "demo": {"resolution": 64, "per_class": 4},
    },
}


def with_profile(cfg_cls, stage: str, profile: str, given: dict):
    """Build a config: paper defaults, then the profile's values, then the options given (non-None)."""
    if profile not in PROFILES[stage]:
        raise ValueError(f"unknown profile {profile!r}; choose {', '.join(PROFILES[stage])}")
    values = {**PROFILES[stage][profile], **{k: v for k, v in given.items() if v is not None}}
    return cfg_cls(**values)
