"""The four-channel VAE of the paper (Sec. 3.3): RGB + mask in, RGB + mask out, same latent space.

Only two layers change: the encoder's first conv takes 4 input channels, the decoder's last conv gives
4 output channels. Both start from the pretrained RGB weights, so the widened VAE encodes and decodes
RGB exactly as before; the mask weights are then learned (`mask_trainable_parameters`).

Value ranges: rgb in [-1, 1] (B,3,H,W); mask in [-1, 1] (B,1,H,W) on the way in (0 -> -1, 1 -> +1,
like the RGB channels); on the way out the 4th channel is a logit: mask = sigmoid(logit) > 0.5.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def _conv_like(old: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, old.kernel_size, old.stride, old.padding,
                     device=old.weight.device, dtype=old.weight.dtype)


@torch.no_grad()
def widen_vae(vae):
    """Widen a 3-channel AutoencoderKL to RGB+mask in place (idempotent) and return it."""
    old_in, old_out = vae.encoder.conv_in, vae.decoder.conv_out
    if old_in.in_channels == 4 and old_out.out_channels == 4:
        return vae
    if old_in.in_channels != 3 or old_out.out_channels != 3:
        raise ValueError(f"expected a 3- or 4-channel VAE, got conv_in {old_in.in_channels} -> "
                         f"conv_out {old_out.out_channels} channels")

    # Encoder: RGB columns copied, the mask column zero -> the latents of an image are unchanged
    # whatever its mask, so the pretrained UNet sees exactly the latents it knows at the start.
    new_in = _conv_like(old_in, 4, old_in.out_channels)
    new_in.weight.zero_()
    new_in.weight[:, :3] = old_in.weight
    new_in.bias.copy_(old_in.bias)

    # Decoder: RGB rows copied; the mask row = minus the mean of the RGB rows, i.e. the initial mask
    # logit is -(mean decoded intensity in [-1, 1]): pixels darker than mid-grey start as "lesion".
    # Lesions are darker than the skin around them, so training starts from a rough lesion mask
    # instead of an empty or random one. (Any init trains: the gradient of a last layer does not
    # depend on its own weights; this one only starts closer.)
    new_out = _conv_like(old_out, old_out.in_channels, 4)
    new_out.weight[:3] = old_out.weight
    new_out.bias[:3] = old_out.bias
    new_out.weight[3] = -old_out.weight.mean(dim=0)
    new_out.bias[3] = -old_out.bias.mean()

    new_in.requires_grad_(old_in.weight.requires_grad)
    new_out.requires_grad_(old_out.weight.requires_grad)
    vae.encoder.conv_in, vae.decoder.conv_out = new_in, new_out
    # Without this, save_pretrained/from_pretrained would rebuild 3-channel layers (with it the round trip
    # was bit-exact).
    vae.register_to_config(in_channels=4, out_channels=4)
    return vae


def mask_trainable_parameters(vae) -> list[nn.Parameter]:
    """Freeze the VAE except the decoder's mask output (row 4 of decoder.conv_out and its bias); return
    decoder.conv_out's parameters (they train with LoRA; a gradient hook zeroes their RGB part).

    The encoder's mask column stays at its zero init, so the latents of every image are exactly the
    latents the pretrained UNet knows, and the mask lives in the latent only through the image (a
    lesion's mask is a function of its image). Measured on the demo (CAS of a colour classifier on
    56 generated images after 300 finetune steps): training the encoder's mask column and the RGB
    parts of both layers let the mask loss drift the latents under the UNet, and the class-faithfulness
    fell from 0.46 (the base) to 0.21; with only the decoder's mask row learning it stays at the base's.
    Counted as trainable: the whole layer (tiny VAE: 580 parameters, of which 145 move; SD2's VAE: 4,612).
    """
    if vae.encoder.conv_in.in_channels != 4:
        raise ValueError("widen_vae(vae) first: the VAE still has 3 input channels")
    vae.requires_grad_(False)
    conv_out = vae.decoder.conv_out
    keep_weight = torch.zeros_like(conv_out.weight)
    keep_weight[3] = 1                                    # (4, C, k, k): output channel 4 = the mask logit
    keep_bias = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=conv_out.bias.dtype, device=conv_out.bias.device)
    for p, keep in ((conv_out.weight, keep_weight), (conv_out.bias, keep_bias)):
        p.requires_grad_(True)
        if not getattr(p, "_mask_only_hook", False):
            p.register_hook(lambda grad, keep=keep: grad * keep.to(grad.device, grad.dtype))   # VAE moved later
            p._mask_only_hook = True
    return [conv_out.weight, conv_out.bias]


def encode(vae, rgb: torch.Tensor, mask: torch.Tensor, sample: bool = True,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """(rgb (B,3,H,W), mask (B,1,H,W)), both in [-1, 1] -> latents * scaling_factor (B,4,H/f,W/f)."""
    x = torch.cat([rgb, mask], dim=1).to(device=vae.device, dtype=vae.dtype)
    with _half(vae):
        posterior = vae.encode(x).latent_dist
    latents = posterior.sample(generator=generator) if sample else posterior.mode()
    return latents * vae.config.scaling_factor


def decode(vae, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """latents (scaled, as the UNet sees them) -> (rgb in about [-1, 1] (B,3,H,W), mask logits (B,1,H,W))."""
    with _half(vae):
        x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return x[:, :3], x[:, 3:4]


def _half(vae):
    """Autocast to the VAE's dtype when it is bf16/fp16: its mask layers (conv_out, trained) stay fp32
    under mixed precision while the frozen rest is half, and a conv cannot mix the two by itself."""
    half = vae.dtype in (torch.float16, torch.bfloat16)
    return torch.autocast(vae.device.type, dtype=vae.dtype) if half else contextlib.nullcontext()


def mask_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Binary mask (bool): sigmoid(logit) > threshold (paper: 0.5)."""
    return torch.sigmoid(logits.float()) > threshold
