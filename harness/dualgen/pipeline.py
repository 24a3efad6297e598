"""DualGenPipeline: one prompt + one seed -> one RGB image and its binary mask (paper Sec. 3.3, 4.2).

    pipe = DualGenPipeline.from_folder("outputs/finetune/model")
    pairs = pipe(["a dermoscopic lesion photo of melanoma for skin cancer diagnosis"] * 2, seeds=[0, 1])
    image, mask = pairs[0]            # PIL RGB, PIL "L" with values 0 / 255

How a sample is made: diffusers' StableDiffusionPipeline runs the DDIM loop with classifier-free
guidance and stops at the latents (output_type="latent"); we decode them with the 4-channel VAE
ourselves (the stock post-processing would treat the mask channel as alpha) and split the result:
RGB = (x[:3] + 1) / 2, mask = sigmoid(x[3]) > threshold. Each sample has its own
torch.Generator(cpu).manual_seed(seed), so a sample is the same whatever batch it is generated in.

Model folder written by `save` and read by `from_folder`:

    dualgen.json          format, base model (id, revision, prediction type), LoRA config,
                          whether the base is inside the folder
    vae/                  the widened 4-channel AutoencoderKL (config + safetensors)
    lora/pytorch_lora_weights.safetensors
                          the UNet LoRA in diffusers' format (StableDiffusionPipeline.load_lora_weights)
    model_index.json, unet/, text_encoder/, tokenizer/, scheduler/
                          only when the base is included: the base components without LoRA. The folder
                          is then a standard StableDiffusionPipeline folder (with a 4-channel VAE) and is
                          loaded with the same `load_base` as any base model.

When the base is not included, from_folder loads it with load_base(model_id, revision) and checks that
the resolved revision is the recorded one. By default the base is included unless it came from the
Hugging Face hub (SD2 is ~5 GB; the hub id plus the commit hash identify it exactly).
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from harness.dualgen.base import BaseModelError, PromptCache, load_base
from harness.dualgen.lora import load_lora, save_lora
from harness.dualgen.vae4 import decode, mask_from_logits
from harness.schema import DUALGEN_FORMAT


class DualGenPipeline:
    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, base_info: dict | None = None):
        if vae.config.out_channels != 4:
            raise ValueError("DualGenPipeline needs the 4-channel VAE (vae4.widen_vae)")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.base_info = dict(base_info or {})
        self._fused = False                          # fuse_lora() makes it True, for good
        self._compiled = False                       # compile_unet() makes it True, for good
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.prompts = PromptCache(tokenizer, text_encoder)
        self.sd = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=self.scheduler,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device):
        self.sd.to(device)
        self.prompts = PromptCache(self.tokenizer, self.text_encoder)   # cached embeddings live on a device
        return self

    # inference_mode, not no_grad: no autograd bookkeeping at all (generation 1.5 % faster at 64 px);
    # the tensors made here, the cached prompt embeddings included, never meet a backward pass
    @torch.inference_mode()
    def __call__(self, prompts: list[str], seeds: list[int], num_inference_steps: int = 45,
                 guidance_scale: float = 1.22, height: int = 512, width: int = 512, batch_size: int = 8,
                 mask_threshold: float = 0.5, progress: bool = True) -> list[tuple[Image.Image, Image.Image]]:
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds: give one seed per sample")
        self.sd.set_progress_bar_config(disable=True)
        starts = range(0, len(prompts), batch_size)
        if progress:
            from tqdm import tqdm
            starts = tqdm(starts, desc="generate", unit="batch")
        results = []
        with _eval_mode(self.unet, self.vae, self.text_encoder):
            for start in starts:
                batch_prompts, batch_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
                n = len(batch_prompts)
                if self.compiled:       # one shape for the compiled UNet: a short batch would compile it again
                    batch_prompts += batch_prompts[-1:] * (batch_size - n)      # padding, dropped below
                    batch_seeds += batch_seeds[-1:] * (batch_size - n)
                generators = [torch.Generator("cpu").manual_seed(s) for s in batch_seeds]
                latents = self.sd(
                    prompt_embeds=self.prompts(batch_prompts),
                    negative_prompt_embeds=self.prompts([""] * len(batch_prompts)),
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    height=height,
                    width=width,
                    generator=generators,
                    output_type="latent",
                ).images
                rgb, mask_logits = decode(self.vae, latents[:n])   # (n,4,h/f,w/f), f = vae_scale_factor: padding dropped
                results += _to_pil(rgb, mask_from_logits(mask_logits, mask_threshold))
        return results

    # ------------------------------------------------------------------------------------------
    # model folder
    # ------------------------------------------------------------------------------------------
    def save(self, folder, include_base: bool | None = None) -> Path:
        if self.fused:
            raise ValueError("this pipeline's LoRA is fused into the UNet (fuse_lora): load it again unfused to save")
        if "default" not in getattr(self.unet, "peft_config", {}):
            raise ValueError("the UNet has no LoRA adapter 'default' to save (lora.add_lora / load_lora)")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if include_base is None:
            include_base = not _is_hub_base(self.base_info)
        if include_base:
            base_unet = copy.deepcopy(self.unet)
            base_unet.unload_lora()                      # the base UNet without the LoRA layers
            StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=base_unet,
                scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False,
            ).save_pretrained(folder, safe_serialization=True)
        else:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        save_lora(self.unet, folder / "lora")
        lora_config = self.unet.peft_config["default"]
        meta = {
            "format": DUALGEN_FORMAT,
            "base": {"model_id": self.base_info.get("model_id", ""), "revision": self.base_info.get("revision", ""),
                     "prediction_type": self.scheduler.config.prediction_type},
            "base_included": include_base,
            "lora": {"rank": lora_config.r, "alpha": lora_config.lora_alpha,
                     "targets": sorted(lora_config.target_modules)},
            "vae_channels": 4,
            "vae_scale_factor": self.vae_scale_factor,
            "mask": "channel 4 of the VAE output is a logit: mask = sigmoid(logit) > threshold",
        }
        (folder / "dualgen.json").write_text(json.dumps(meta, indent=1) + "\n")
        return folder

    def fuse_lora(self) -> DualGenPipeline:
        """Make the UNet an inference-only one, with diffusers' own calls: merge the LoRA into each layer
        (W + scale * B A), drop peft's wrappers (the merged plain layers stay), and join each attention's
        projections into one matmul (q, k, v for self-attention, k, v for cross-attention). Outputs equal
        the unfused pipeline's up to float rounding (on the demo model at most one 8-bit level per pixel,
        masks identical but a rare threshold pixel). Time per generation call against the stock
        pipeline with unfused LoRA, tiny model, 64 px, batch 4, 1 thread: merging only 0.88-0.91x, all
        three with inference mode 0.82-0.89x (it varies from process to process). There is no way
        back: load the folder again for an unfused pipeline, which is also the only kind that can be
        saved."""
        if not self.fused:
            self.unet.fuse_lora()                    # W <- W + scale * B A in every LoRA layer
            self.unet.unload_lora()                  # peft's wrappers out: one Linear per projection
            self.unet.fuse_qkv_projections()         # to_qkv / to_kv and diffusers' FusedAttnProcessor2_0
            self._fused = True
        return self

    def compile_unet(self) -> DualGenPipeline:
        """Fuse the LoRA (fuse_lora) and compile the UNet with torch.compile (inductor, static shapes).
        The first generation call then compiles, a one-off cost (tiny model on 2 CPU cores: ~45 s), and
        every call after it is faster: 0.71-0.73x the stock pipeline's time with unfused LoRA, against
        0.82-0.89x fused alone (tiny model, 64 px, batch 4, 20 steps, 1 thread). Every batch then runs at
        `batch_size` (a short last batch is padded with copies of its last sample, dropped after), since
        another shape would compile again. Worth it when the run makes many UNet calls (the paper's
        hundreds of 512 px pairs per class); on the demo's 114 pairs at 64 px the compile costs more than
        it saves, so it is off by default (GenerateConfig.compile_unet)."""
        self.fuse_lora()
        if not self._compiled:
            self.unet.compile()                      # in place: the same module, its forward compiled
            self._compiled = True
        return self

    @property
    def fused(self) -> bool:
        return self._fused

    @property
    def compiled(self) -> bool:
        return self._compiled

    @classmethod
    def from_folder(cls, folder, dtype=torch.float32, fuse: bool = False,
                    compile_unet: bool = False) -> DualGenPipeline:
        folder = Path(folder)
        meta_path = folder / "dualgen.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{folder} is not a DualGen model folder (no dualgen.json)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != DUALGEN_FORMAT:
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r} (expected {DUALGEN_FORMAT})")
        recorded = meta["base"]
        if meta["base_included"]:
            base = load_base(str(folder), dtype=dtype)
        else:
            base = load_base(recorded["model_id"], recorded["revision"], dtype=dtype)
            if recorded["revision"] and base.info["revision"] != recorded["revision"]:
                raise BaseModelError(
                    f"{folder} was trained on {recorded['model_id']} at revision {recorded['revision']}, "
                    f"but that base now resolves to revision {base.info['revision']}")
        vae = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype)
        vae.requires_grad_(False)
        load_lora(base.unet, folder / "lora")
        pipe = cls(base.unet, vae, base.text_encoder, base.tokenizer, base.scheduler, base_info=recorded)
        if compile_unet:
            return pipe.compile_unet()               # fuses too
        return pipe.fuse_lora() if fuse else pipe


def pair_grid(pairs) -> Image.Image:
    """One column per (image, mask) pair: the image on top, its mask below (validation grids, samples.png)."""
    w, h = pairs[0][0].size
    grid = Image.new("RGB", (w * len(pairs), h * 2))
    for i, (img, mask) in enumerate(pairs):
        grid.paste(img, (i * w, 0))
        grid.paste(mask.convert("RGB"), (i * w, h))
    return grid


@contextlib.contextmanager
def _eval_mode(*modules):
    """Eval mode inside, the previous mode after. Train mode may pick other attention kernels (not
    bit-identical), so validation grids made during training equal what the saved model generates."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def _is_hub_base(info: dict) -> bool:
    """True when the base came from the hub: a model id that is not a local path, pinned to a commit."""
    model_id, revision = info.get("model_id", ""), info.get("revision", "")
    return (model_id not in ("", "tiny") and not Path(model_id).expanduser().exists()
            and re.fullmatch(r"[0-9a-f]{40}", revision or "") is not None)


def _to_pil(rgb: torch.Tensor, mask: torch.Tensor) -> list[tuple[Image.Image, Image.Image]]:
    """(B,3,H,W) in [-1, 1] and (B,1,H,W) bool -> [(RGB image, "L" mask with 0/255)]."""
    rgb = ((rgb.float() + 1) / 2).clamp(0, 1)
    rgb = (rgb * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    mask = (mask[:, 0].cpu().numpy().astype(np.uint8) * 255)
    return [(Image.fromarray(r), Image.fromarray(m)) for r, m in zip(rgb, mask)]
