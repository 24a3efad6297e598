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


def bce_per_sample(mask_logits: torch.Tensor, mask01: torch.Tensor) -> torch.Tensor:
    """Eq. 6 per sample: mean binary cross-entropy of sigmoid(logits) over each mask's pixels, (B,)."""
    bce = F.binary_cross_entropy_with_logits(mask_logits.float(), mask01.float(), reduction="none")
    return bce.flatten(1).mean(1)


def dice_per_sample(mask_logits: torch.Tensor, mask01: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Eq. 7 per sample, (B,): 1 - (2 * sum(y * p) + smooth) / (sum(y) + sum(p) + smooth), p = sigmoid(logits)."""
    p = torch.sigmoid(mask_logits.float()).flatten(1)
    y = mask01.float().flatten(1)
    return 1 - (2 * (y * p).sum(1) + smooth) / (y.sum(1) + p.sum(1) + smooth)


def bce_loss(mask_logits: torch.Tensor, mask01: torch.Tensor) -> torch.Tensor:
    """Eq. 6 over the batch (the mean of the per-sample means: all masks have one size)."""
    return bce_per_sample(mask_logits, mask01).mean()


def dice_loss(mask_logits: torch.Tensor, mask01: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Eq. 7, soft Dice per sample, then the batch mean."""
    return dice_per_sample(mask_logits, mask01, smooth).mean()


def mask_weights(scheduler, timesteps: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """Per-sample weight of the mask terms at the samples' timesteps.

    "none":       1 at every timestep (Eq. 8 read literally).
    "alpha_bar":  alpha_bar_t: the mask is read from the predicted x0, which at large t is a guess from
                  almost pure noise (alpha_bar_999 = 0.005 with the SD schedule); weighting by alpha_bar_t
                  (= SNR / (1 + SNR)) keeps those guesses from dominating the LoRA update. Measured on the
                  demo: with weight 1 the mask terms (~0.5-1, vs ~0.05 for the MSE) pulled the LoRA away
                  from the base's text conditioning in 300 steps.
    """
    if weighting == "none":
        return None
    if weighting == "alpha_bar":
        return scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    raise ValueError(f"mask loss weighting must be none or alpha_bar, got {weighting!r}")


def dual_loss(model_output: torch.Tensor, target: torch.Tensor, mask_logits: torch.Tensor,
              mask01: torch.Tensor, lambdas=(1.0, 1.0, 1.0), smooth: float = 1.0,
              weights: torch.Tensor | None = None) -> dict:
    """Eq. 8: {"loss", "loss_diffusion", "loss_bce", "loss_dice"} (tensors; "loss" is the one to backprop).

    `weights` (B,) scale each sample's mask terms inside "loss" (see mask_weights); "loss_bce" and
    "loss_dice" are the unweighted batch means, so their curves read as mask quality.
    """
    loss_diffusion = F.mse_loss(model_output.float(), target.float())     # Eq. 5
    bce = bce_per_sample(mask_logits, mask01)                              # Eq. 6
    dice = dice_per_sample(mask_logits, mask01, smooth)                    # Eq. 7
    w = torch.ones_like(bce) if weights is None else weights.to(bce)
    l1, l2, l3 = lambdas
    loss = l1 * loss_diffusion + l2 * (w * bce).mean() + l3 * (w * dice).mean()   # Eq. 8
    return {"loss": loss, "loss_diffusion": loss_diffusion, "loss_bce": bce.mean(), "loss_dice": dice.mean()}
