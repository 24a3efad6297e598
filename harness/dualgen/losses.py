"""The paper's training loss (Sec. 3.3, Eq. 5-8), written out.

    L_total = lambda1 * L_diffusion + lambda2 * L_mask(BCE) + lambda3 * L_dice

L_diffusion is the usual latent-diffusion MSE between the UNet output and its target (the noise for
epsilon models such as SD2-base, the velocity for v models such as the 768-px SD2). The mask terms need
a mask, which only exists in pixel space: the UNet's prediction is turned into a predicted clean latent
x0 (`predict_x0`), decoded by the 4-channel VAE, and its 4th channel (a logit) is compared with the
ground-truth mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _alpha_bar(scheduler, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t (cumulative product of 1 - beta) per sample, shaped (B,1,1,1), in float32."""
    a = scheduler.alphas_cumprod.to(device=like.device, dtype=torch.float32)[timesteps.to(like.device)]
    return a.view(-1, *([1] * (like.dim() - 1)))


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output: eps for "epsilon", v = sqrt(a)*eps - sqrt(1-a)*x0 for "v_prediction"."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def predict_x0(scheduler, noisy_latents: torch.Tensor, model_output: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by the UNet output, with a = alpha_bar_t and z_t = sqrt(a)*x0 + sqrt(1-a)*eps:

        epsilon:       x0 = (z_t - sqrt(1 - a) * eps_pred) / sqrt(a)
        v_prediction:  x0 = sqrt(a) * z_t - sqrt(1 - a) * v_pred      (v = sqrt(a)*eps - sqrt(1-a)*x0)

    Computed in float32 (1/sqrt(a) reaches ~15 at t = 999 with the SD schedule).
    """
    a = _alpha_bar(scheduler, timesteps, noisy_latents)
    z, out = noisy_latents.float(), model_output.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (z - (1 - a).sqrt() * out) / a.sqrt()
    if kind == "v_prediction":
        return a.sqrt() * z - (1 - a).sqrt() * out
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def bce_loss(mask_logits: torch.Tensor, mask01: torch.Tensor) -> torch.Tensor:
    """Eq. 6: mean binary cross-entropy of sigmoid(logits) against the 0/1 mask (computed from logits)."""
    return F.binary_cross_entropy_with_logits(mask_logits.float(), mask01.float())


def dice_loss(mask_logits: torch.Tensor, mask01: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Eq. 7, soft Dice per sample, then the batch mean:

        1 - (2 * sum(y * p) + smooth) / (sum(y) + sum(p) + smooth),   p = sigmoid(logits)
    """
    p = torch.sigmoid(mask_logits.float()).flatten(1)
    y = mask01.float().flatten(1)
    dice = (2 * (y * p).sum(1) + smooth) / (y.sum(1) + p.sum(1) + smooth)
    return (1 - dice).mean()


def dual_loss(model_output: torch.Tensor, target: torch.Tensor, mask_logits: torch.Tensor,
              mask01: torch.Tensor, lambdas=(1.0, 1.0, 1.0), smooth: float = 1.0) -> dict:
    """Eq. 8: {"loss", "loss_diffusion", "loss_bce", "loss_dice"} (tensors; "loss" is the one to backprop)."""
    loss_diffusion = F.mse_loss(model_output.float(), target.float())     # Eq. 5
    loss_bce = bce_loss(mask_logits, mask01)                                # Eq. 6
    loss_dice = dice_loss(mask_logits, mask01, smooth)                      # Eq. 7
    l1, l2, l3 = lambdas
    loss = l1 * loss_diffusion + l2 * loss_bce + l3 * loss_dice            # Eq. 8
    return {"loss": loss, "loss_diffusion": loss_diffusion, "loss_bce": loss_bce, "loss_dice": loss_dice}
