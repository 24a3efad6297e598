"""LoRA on the UNet's attention projections (paper Sec. 3.2 / 4.2: rank 4 on to_q, to_k, to_v, to_out.0).

The adapter is peft's, injected with diffusers' own `unet.add_adapter`. The saved file is the one
diffusers writes and reads (`pytorch_lora_weights.safetensors`, keys prefixed "unet.", the LoRA config
in the safetensors metadata), so a plain StableDiffusionPipeline can load it with `load_lora_weights`.
Without the metadata diffusers would reload with lora_alpha = rank (wrong scale when alpha != rank).
"""
from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def add_lora(unet, rank: int = 4, alpha: float = 4.0, targets=DEFAULT_TARGETS, adapter_name: str = "default"):
    """Freeze the UNet and add a trainable LoRA adapter (B = 0 at the start: outputs unchanged)."""
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    unet.add_adapter(config, adapter_name=adapter_name)
    return unet


def trainable_summary(*modules) -> dict:
    """Parameter counts over the given modules (each parameter counted once)."""
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    share = trainable / total if total else 0.0
    return {"trainable": trainable, "total": total, "trainable_share": share,
            "reduction_pct": 100.0 * (1.0 - share)}


def lora_state_dict(unet, adapter_name: str = "default") -> dict:
    """The adapter's tensors only, peft key format (for checkpoints)."""
    return get_peft_model_state_dict(unet, adapter_name=adapter_name)


def set_lora_state_dict(unet, state_dict: dict, adapter_name: str = "default") -> None:
    """Load `lora_state_dict` output into a UNet that already has the adapter; all keys must match."""
    result = set_peft_model_state_dict(unet, state_dict, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise KeyError(f"LoRA state dict has keys the UNet does not: {unexpected[:5]}")
    missing = [k for k in lora_state_dict(unet, adapter_name) if k not in state_dict]
    if missing:
        raise KeyError(f"LoRA state dict lacks keys of adapter {adapter_name!r}: {missing[:5]}")


def save_lora(unet, folder, adapter_name: str = "default") -> Path:
    """Write <folder>/pytorch_lora_weights.safetensors in diffusers' format, with the LoRA config."""
    folder = Path(folder)
    StableDiffusionPipeline.save_lora_weights(
        folder,
        unet_lora_layers=lora_state_dict(unet, adapter_name),
        unet_lora_adapter_metadata=unet.peft_config[adapter_name].to_dict(),   # keeps lora_alpha
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
    )
    return folder / LORA_WEIGHT_NAME


def load_lora(unet, folder, adapter_name: str = "default"):
    """Add the adapter saved by `save_lora` to a base UNet (inference: its weights stay frozen)."""
    unet.load_lora_adapter(str(folder), prefix="unet", weight_name=LORA_WEIGHT_NAME, adapter_name=adapter_name)
    return unet
