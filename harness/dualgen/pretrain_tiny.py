"""Pre-train the tiny SD2-shaped base model on the demo dataset (`skindualgen build-tiny-base`).

A LoRA fine-tune adapts a model that already generates images; a randomly initialised base gives LoRA
nothing to adapt. The real SD2 was pre-trained on LAION; our tiny stand-in is pre-trained here, on CPU,
in about 16 min on 2 cores, by the same latent-diffusion recipe at toy scale:

  1. VAE (3 channels, like SD2's): full-weight training on RGB images, L1 + 2 x MSE reconstruction with
     the lesion's pixels weighted 5x (LESION_WEIGHT) + a small KL term; then scaling_factor =
     1 / std(latents), as the LDM paper chose SD's 0.18215. The lesion covers ~3-30 % of a demo image:
     with a plain L1 the VAE learned skin and hairs and turned every lesion brown (a colour classifier
     told the classes of its reconstructions apart 64 % of the time; 95 % with the weighting).
  2. UNet: full-weight epsilon-prediction on those latents, conditioned on the class prompt
     "a dermoscopic lesion photo of {class_name} for skin cancer diagnosis", 10 % empty prompts (as SD
     was trained: classifier-free guidance then means something), DDPM noise schedule = the SD2-base
     DDIM settings, Min-SNR-5 loss weighting (Hang et al. 2023: the easy low-noise steps stop dominating,
     which is where the class hardly matters).
  Both stages draw class-balanced batches (a class uniformly, then an image of it): the demo's nevi
  would otherwise be a third of all updates and the small classes would not be learned.
  How many latents the UNet stage sees decides how faithfully a demo fine-tune draws each class (CAS:
  a ResNet34 trained on the real demo train split names the prompt's class): 3,000 steps x 16 latents
  gave 0.80 (weakest class 0.42), 6,000 x 16 0.88-0.92 (weakest 0.50-0.62), 3,000 x 32 with a fused
  AdamW 0.96 (weakest 0.83) in half the time of 6,000 x 16 (recipe 4, the default).
  The text encoder trains together with the UNet (SD2's OpenCLIP came pre-trained by contrastive
  learning; ours has no other source of meaning). It is frozen again afterwards, as in SD2.

Masks only weight the VAE's reconstruction loss: the base generates RGB only, like SD2. The mask comes in
with the 4-channel VAE and the LoRA fine-tune (finetune stage). Same seed, same data, same thread
settings -> same weights on CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from PIL import Image

from harness.files import user_dir_mode
from harness.config import PROMPT_TEMPLATE
from harness.dualgen.tiny import RESOLUTION, build_tiny_components, count_params, save_components

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LESION_WEIGHT = 4.0        # VAE loss weight of a lesion pixel: 1 + LESION_WEIGHT (skin: 1)
SNR_GAMMA = 5.0            # Min-SNR weighting of the UNet loss
UNET_BATCH = 32            # latents per UNet step: 32 keeps both cores busy, 16 used ~1.1 of 2
FUSED_ADAMW = True         # one AdamW kernel per step in both stages: UNet steps ~5-9 % faster


# ----------------------------------------------------------------------------------------------
# data: <root>/images/<class name>/<id>.png, all held in memory (the demo set is ~140 small images)
# ----------------------------------------------------------------------------------------------
def load_class_images(images_dir, resolution: int = RESOLUTION) -> tuple[torch.Tensor, list[str]]:
    """All images under images_dir/<class>/ (or images_dir/images/<class>/): (N,3,R,R) in [-1,1], labels."""
    images, _, labels = load_class_pairs(images_dir, resolution)
    return images, labels


def load_class_pairs(images_dir, resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N,3,R,R) in [-1,1], their lesion masks (N,1,R,R) in {0,1} (masks/<class>/<id>.png beside
    images/; all zero where an image has none) and labels."""
    root = Path(images_dir)
    if (root / "images").is_dir():
        root = root / "images"
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images found as {root}/<class name>/<file>.png")
    arrays, masks, labels = [], [], []
    for path in files:
        with Image.open(path) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((resolution, resolution), Image.LANCZOS)))
        mask_path = root.parent / "masks" / path.parent.name / f"{path.stem}.png"
        if mask_path.is_file():
            with Image.open(mask_path) as mk:
                masks.append(np.asarray(mk.convert("L").resize((resolution, resolution), Image.NEAREST)) > 0)
        else:
            masks.append(np.zeros((resolution, resolution), bool))
        labels.append(path.parent.name)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return images, torch.from_numpy(np.stack(masks)).float()[:, None], labels


def balanced_indices(labels: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n indices: a class drawn uniformly, then one of its items uniformly (with replacement)."""
    classes = labels.unique()
    members = [torch.nonzero(labels == c).squeeze(1) for c in classes]
    which = torch.randint(len(classes), (n,), generator=generator)
    return torch.stack([members[c][torch.randint(len(members[c]), (1,), generator=generator)[0]]
                        for c in which.tolist()])


def random_flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped horizontally and/or vertically with probability 1/2 each."""
    flip_h, flip_v = (torch.rand(2, x.shape[0], generator=generator) < 0.5).view(2, -1, 1, 1, 1)
    x = torch.where(flip_h, x.flip(-1), x)
    return torch.where(flip_v, x.flip(-2), x)


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, unit="step")


# ----------------------------------------------------------------------------------------------
# stage 1: VAE
# ----------------------------------------------------------------------------------------------
def train_vae(vae, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, steps: int,
              generator: torch.Generator, batch_size: int = 8, lr: float = 2e-3, kl_weight: float = 1e-4,
              progress: bool = True) -> list[float]:
    """Reconstruction (L1 + 2 x MSE, lesion pixels weighted 1 + LESION_WEIGHT) + kl_weight x KL per
    latent element, class-balanced batches, random flips. Returns the per-step L1 (unweighted)."""
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, fused=FUSED_ADAMW)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=20, num_training_steps=steps)
    losses = []
    for _ in _progress(range(steps), "tiny VAE", progress):
        idx = balanced_indices(labels, batch_size, generator)
        both = random_flips(torch.cat([images[idx], masks[idx]], dim=1), generator)
        x, weight = both[:, :3], 1.0 + LESION_WEIGHT * both[:, 3:]       # (B,3,R,R), (B,1,R,R)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        error = reconstruction - x
        loss_rec = ((error.abs() + 2 * error ** 2) * weight).mean() / weight.mean()
        loss_kl = posterior.kl().mean() / posterior.mean[0].numel()     # per latent element
        loss = loss_rec + kl_weight * loss_kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(error.abs().mean().item())
    vae.eval()
    return losses


@torch.no_grad()
def encode_all(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image in its 4 flip variants: two (4N,4,h,w) tensors."""
    variants = torch.cat([images, images.flip(-1), images.flip(-2), images.flip(-1).flip(-2)])
    means, stds = [], []
    for chunk in variants.split(32):
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


# ----------------------------------------------------------------------------------------------
# stage 2: UNet
# ----------------------------------------------------------------------------------------------
def class_prompt_ids(tokenizer, class_names: list[str]) -> torch.Tensor:
    """Token ids (P+1, 77) of the P class prompts and, last, the empty prompt: what train_unet expects."""
    prompts = [PROMPT_TEMPLATE.format(class_name=name) for name in class_names] + [""]
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_unet(unet, text_encoder, scheduler, latent_mean: torch.Tensor, latent_std: torch.Tensor,
               prompt_ids: torch.Tensor, label_ids: torch.Tensor, steps: int, generator: torch.Generator,
               batch_size: int = UNET_BATCH, lr: float = 2e-3, uncond_prob: float = 0.1,
               progress: bool = True) -> list[float]:
    """Epsilon-prediction MSE (Eq. 5) with Min-SNR-5 weights, on latents already multiplied by the VAE
    scaling factor, class-balanced batches.

    prompt_ids: token ids (P+1, 77) of the P class prompts and, last, the empty prompt; label_ids index
    the class prompt of each latent. UNet and text encoder train together. Returns the per-step MSE.
    """
    from diffusers.training_utils import compute_snr
    unet.train()
    text_encoder.train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2, fused=FUSED_ADAMW)
    lr_schedule = get_scheduler("cosine", optimizer, num_warmup_steps=50, num_training_steps=steps)
    empty = len(prompt_ids) - 1
    losses = []
    for _ in _progress(range(steps), "tiny UNet", progress):
        idx = balanced_indices(label_ids, batch_size, generator)
        latents = latent_mean[idx] + latent_std[idx] * torch.randn(latent_mean[idx].shape, generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        drop = torch.rand(batch_size, generator=generator) < uncond_prob
        which = torch.where(drop, empty, label_ids[idx])                   # (B,) prompt index
        embeddings = text_encoder(prompt_ids)[0]           # (P+1,77,H): all prompts at once, cheap
        # Pick each sample's prompt by a one-hot matmul, not embeddings[which]: the backward of indexing
        # adds gradients in a thread-dependent order on CPU (weights drifted 5e-6 apart in 20 steps
        # between two equal runs); a matmul's backward is a fixed sum.
        pick = torch.nn.functional.one_hot(which, len(prompt_ids)).to(embeddings.dtype)  # (B,P+1)
        cond = (pick @ embeddings.flatten(1)).view(batch_size, *embeddings.shape[1:])   # (B,77,H)
        prediction = unet(noisy, timesteps, encoder_hidden_states=cond).sample
        mse = (prediction - noise).pow(2).mean(dim=(1, 2, 3))              # (B,)
        snr = compute_snr(scheduler, timesteps)
        loss = (mse * snr.clamp(max=SNR_GAMMA) / snr).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(mse.mean().item())
    unet.eval()
    text_encoder.eval()
    return losses


# ----------------------------------------------------------------------------------------------
# the whole recipe
# ----------------------------------------------------------------------------------------------
def build_tiny_base(output_dir, images_dir=None, seed: int = 0, resolution: int = RESOLUTION,
                    vae_steps: int = 1000, unet_steps: int = 3000, progress: bool = True) -> Path:
    """Build and pre-train the tiny base, save it as a diffusers folder in output_dir, return the path.

    images_dir: a dataset with images/<class name>/<id>.png; None = the embedded demo dataset (seed 0).
    """
    started = time.time()
    output_dir = Path(output_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if images_dir is None:
            from harness.data.demo import make_demo_dataset
            images_dir = make_demo_dataset(Path(tmp) / "demo", seed=0)
        images, masks, labels = load_class_pairs(images_dir, resolution)
    class_names = sorted(set(labels))
    label_ids = torch.tensor([class_names.index(name) for name in labels])

    parts = build_tiny_components(seed)
    vae, unet, scheduler = parts["vae"], parts["unet"], parts["scheduler"]
    # One random stream per stage, each from the seed: the UNet stage draws the same batches and noise
    # whatever the VAE stage consumed (changing vae_steps does not reshuffle the UNet's data order).
    vae_generator = torch.Generator().manual_seed(seed)
    unet_generator = torch.Generator().manual_seed(seed)

    vae_losses = train_vae(vae, images, masks, label_ids, vae_steps, vae_generator, progress=progress)
    vae.requires_grad_(False)
    latent_mean, latent_std = encode_all(vae, images)
    scaling_factor = float(1.0 / latent_mean.std())
    vae.register_to_config(scaling_factor=scaling_factor)

    prompt_ids = class_prompt_ids(parts["tokenizer"], class_names)
    flip_label_ids = label_ids.repeat(4)            # encode_all stacks 4 flip variants of the images
    unet_losses = train_unet(unet, parts["text_encoder"], scheduler, latent_mean * scaling_factor,
                             latent_std * scaling_factor, prompt_ids, flip_label_ids, unet_steps, unet_generator,
                             progress=progress)
    parts["text_encoder"].requires_grad_(False)

    # Write next to output_dir, then swap it in: readers of output_dir never see a half-written model.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    save_components(parts, staging)
    report = {
        "recipe": "harness.dualgen.pretrain_tiny.build_tiny_base",
        "recipe_version": 4, "lesion_weight": LESION_WEIGHT, "snr_gamma": SNR_GAMMA, "class_balanced": True,
        "unet_batch_size": UNET_BATCH, "fused_adamw": FUSED_ADAMW,
        "seed": seed, "resolution": resolution, "vae_steps": vae_steps, "unet_steps": unet_steps,
        "images": len(images), "classes": class_names,
        "scaling_factor": scaling_factor,
        "params": {name: count_params(parts[name]) for name in ("unet", "vae", "text_encoder")},
        "vae_l1_last100": float(np.mean(vae_losses[-100:])),
        "unet_mse_last100": float(np.mean(unet_losses[-100:])),
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "openmp_wait": {key: os.environ.get(key, "") for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")},
    }
    (staging / "build.json").write_text(json.dumps(report, indent=1) + "\n")
    os.chmod(staging, user_dir_mode())                # mkdtemp makes it 0700
    if output_dir.exists():
        old = output_dir.with_name(staging.name + "-old")
        output_dir.rename(old)
        staging.rename(output_dir)
        shutil.rmtree(old)
    else:
        staging.rename(output_dir)
    return output_dir
