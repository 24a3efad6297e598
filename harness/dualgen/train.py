"""The `finetune` stage: LoRA fine-tune of the 4-channel SD2 model (paper Sec. 3.3, 4.2).

Read top to bottom: `finetune` sets up data, model, optimizer and the MLflow run; `training_step`
is one step of the paper's loss; `save_checkpoint` / `load_checkpoint` make resume exact.

What trains: LoRA (rank 4) on the UNet attention projections to_q/to_k/to_v/to_out.0, plus the
widened VAE's new mask row of decoder.conv_out (row 4 and its bias: a frozen new row could never
learn to read masks; vae4.mask_trainable_parameters). The encoder's mask column stays at its zero
init, and everything else is frozen, as in the paper.

Loss (Eq. 5-8): L = λ1·MSE(unet(z_t), target) + λ2·BCE(m̂, m) + λ3·Dice(m̂, m), where target is the
noise (epsilon models) or v = sqrt(ā)·ε - sqrt(1-ā)·z0 (v models), and m̂ is channel 4 of the VAE
decoding of the predicted clean latent ẑ0 (losses.predict_x0): the mask terms reach the UNet's LoRA
through ẑ0 and the decoder's mask row directly.

Reproducibility: the noise, timesteps and VAE posterior sample of step s come from a generator
seeded by (seed, s); the batch order of epoch e from (seed, e); augmentation of sample i in epoch e
from (seed, e, i). A resumed run therefore continues with exactly the numbers an uninterrupted run
would have used, with no RNG state to restore beyond the step counter.

Data-parallel (`accelerate launch --num_processes N`; tests/test_distributed.py runs N = 2 on CPU):
`train_batch_size` is per process. Step s takes global batch s of size train_batch_size x N from
the same seeded order and process r trains on its every N-th sample from r; its noise comes from
(seed, s, r). Only process 0 logs to MLflow and writes checkpoints and the model; the logged losses
are the means over processes. At every checkpoint and at the end, the processes compare a hash of
their trained weights and stop if they differ. A checkpoint resumes only under the same N.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast, gather_object
from diffusers.optimization import get_scheduler
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from harness import checks, tracking
from harness.config import FinetuneConfig
from harness.data.augment import PairDataset, paired_augmentation
from harness.data.prepare import load_prepared, log_dataset_input
from harness.dualgen.base import PromptCache, load_base
from harness.dualgen.lora import add_lora, lora_state_dict, set_lora_state_dict, trainable_summary
from harness.dualgen.losses import bce_loss, dice_loss, diffusion_target, dual_loss, mask_weights, predict_x0
from harness.dualgen.pipeline import DualGenPipeline, pair_grid
from harness.dualgen.vae4 import decode, mask_trainable_parameters, widen_vae
from harness.errors import ConfigError, TrackingLost
from harness.schema import (METRIC_TRAIN_SECONDS, STAGE_FINETUNE, TAG_BASE_MODEL, TAG_BASE_REVISION, TAG_NUM_PROCESSES,
                            TAG_OUTPUT_DIR, TAG_PREDICTION_TYPE, TAG_RESUMED_FROM, TRAINING_JSON)

# config fields that may differ between an interrupted run and its resume
RESUME_MAY_DIFFER = {"resume_from_checkpoint", "validation_epochs", "validation_steps", "log_every",
                     "checkpointing_steps", "checkpoints_total_limit", "num_workers", "output_dir"}


class NonFiniteLossError(FloatingPointError):
    pass


def _request_failure(text: str) -> str:
    """The gist of a failed MLflow request's exception text (urllib3's is one long repr)."""
    found = [m.group(0) for m in (re.search(r"API request to \S+", text), re.search(r"(?<=Caused by )\w+", text),
                                  re.search(r"\[Errno -?\d+\] [^'\"\\)]+", text)) if m]
    return ": ".join(found) if found else text[:300]


class MetricBuffer:
    """Per-step metrics sent to MLflow in batches: one asynchronous log_batch call per `every` steps
    (or `seconds`), instead of one call per step. Every step's values are still logged with their
    step; a per-step call cost ~6 ms here, 13 % of a 64-px tiny step (bench/: tracking_overhead).
    One batch is in flight at a time: a flush first waits for the one before, so a store that stays
    down past MLflow's retries stops the training (TrackingLost, with `hint`) instead of losing it all."""

    def __init__(self, run_id: str, every: int = 50, seconds: float = 10.0, hint: str = ""):
        self.run_id, self.every, self.seconds, self.hint = run_id, every, seconds, hint
        self.pending: list = []
        self.in_flight: list = []        # the RunOperations of the last flush
        self.steps = 0
        self.last = time.monotonic()
        self.lost = False

    def add(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending += [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.steps += 1
        if self.steps >= self.every or time.monotonic() - self.last > self.seconds:
            self.flush()

    def flush(self) -> None:
        self.wait()
        self.in_flight = [mlflow.tracking.MlflowClient().log_batch(self.run_id, metrics=self.pending[i:i + 1000],
                                                                   synchronous=False)
                          for i in range(0, len(self.pending), 1000)]     # MLflow's per-call limit
        self.pending, self.steps, self.last = [], 0, time.monotonic()

    def wait(self) -> None:
        """Block until the last flush is stored; TrackingLost if it could not be."""
        ops, self.in_flight = self.in_flight, []
        for op in ops:
            try:
                op.wait()
            except mlflow.exceptions.MlflowException as e:
                self.lost = True
                cause = _request_failure(str(e))
                raise TrackingLost(f"tracking store {tracking.without_password(mlflow.get_tracking_uri())} "
                                   f"stopped answering ({cause}){self.hint}") from None

    def close(self) -> None:
        """Send what is left and wait for it (also after a NaN stop or an interrupt); nothing more
        once the store was lost."""
        if not self.lost:
            self.flush()
            self.wait()


def output_dir_for(cfg: FinetuneConfig) -> Path:
    """cfg.output_dir, or outputs/finetune-<hash of the config fields a resume must keep>: runs with
    different configs never share checkpoints, and re-running the same config finds its own."""
    if cfg.output_dir:
        return Path(cfg.output_dir)
    keep = {k: v for k, v in sorted(asdict(cfg).items()) if k not in RESUME_MAY_DIFFER}
    return Path("outputs") / f"finetune-{hashlib.sha256(json.dumps(keep).encode()).hexdigest()[:10]}"


def captions_for(samples, cfg: FinetuneConfig) -> list[str]:
    if cfg.caption_source == "template":
        return [cfg.prompt_template.format(class_name=s.label) for s in samples]
    if cfg.caption_source == "description":
        missing = [s.id for s in samples if not s.description.strip()]
        if missing:
            raise ValueError(f"--caption-source description: {len(missing)} training image(s) have no "
                             f"description (e.g. {', '.join(missing[:5])}); run `skindualgen describe` "
                             "or use --caption-source template")
        return [s.description for s in samples]
    raise ValueError(f"caption_source must be template or description, got {cfg.caption_source!r}")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, labels: list[str] | None = None) -> list[list[int]]:
    """The batch order of one epoch, from (seed, epoch) only; the last short batch is kept.
    With `labels` (class-balanced): n draws with replacement, every class equally likely, then
    uniform within the class; otherwise a permutation of range(n)."""
    g = torch.Generator().manual_seed(seed * 10_007 + epoch)
    if labels is None:
        order = torch.randperm(n, generator=g).tolist()
    else:
        counts = {c: labels.count(c) for c in set(labels)}
        weights = torch.tensor([1.0 / counts[c] for c in labels], dtype=torch.float64)
        order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _latents(vae, rgb, mask01, eps):
    """Scaled VAE latents of (rgb, mask) with the posterior sample mean + std * eps (eps given, so a
    subset re-encoded later gets exactly the same sample)."""
    dist = vae.encode(torch.cat([rgb, mask01 * 2 - 1], dim=1).to(vae.dtype)).latent_dist
    return (dist.mean + dist.std * eps.to(dist.mean.dtype)).float() * vae.config.scaling_factor


def training_step(batch, unet, vae, scheduler, prompt_cache, cfg: FinetuneConfig, step: int, device, rank: int = 0):
    """One step of the paper's loss. Returns dict(loss, loss_diffusion, loss_bce, loss_dice).
    `rank`: the data-parallel process; each draws its own noise (rank 0 that of a single process).

    Cost design (bench/): the mask terms need a VAE decode and its backward pass (to the decoder's
    mask row, and through ẑ0 to the LoRA); both are done for a seeded random subset of
    `mask_loss_samples` samples only. BCE and Dice are means over samples, so the loss is the same in
    expectation; the diffusion term always uses the whole batch.
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step + (rank << 40))
    rgb, mask01 = batch["image"].to(device), batch["mask"].to(device)
    n = rgb.shape[0]
    k = cfg.mask_loss_samples if 0 < cfg.mask_loss_samples < n else n
    pick = torch.randperm(n, generator=g)[:k].to(device)
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (n, vae.config.latent_channels, rgb.shape[2] // f, rgb.shape[3] // f)
    eps = torch.randn(shape, generator=g).to(device)        # posterior sample
    noise = torch.randn(shape, generator=g).to(device)      # diffusion noise
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=g).to(device)
    # encode (the encoder is frozen): the picked samples, whose clean latents the mask path compares
    # against, and the rest; the diffusion path sees all of them
    latents_k = _latents(vae, rgb[pick], mask01[pick], eps[pick])
    latents = torch.empty((n, *latents_k.shape[1:]), dtype=latents_k.dtype, device=latents_k.device)
    latents[pick] = latents_k.detach()
    if k < n:
        rest = torch.ones(n, dtype=torch.bool, device=pick.device)
        rest[pick] = False
        with torch.no_grad():
            latents[rest] = _latents(vae, rgb[rest], mask01[rest], eps[rest])
    noisy = scheduler.add_noise(latents, noise, t)
    drop = (torch.rand(n, generator=g) < cfg.prompt_dropout).tolist()     # classifier-free guidance training
    text = prompt_cache(["" if d else c for c, d in zip(batch["caption"], drop)]).to(device)
    dtype = getattr(unet, "module", unet).dtype          # under DDP the wrapper has no .dtype
    pred = unet(noisy.to(dtype), t, encoder_hidden_states=text.to(dtype)).sample.float()
    target = diffusion_target(scheduler, latents, noise, t)
    # the mask path: predicted clean latent of the picked samples -> VAE decode -> channel 4 logits
    noisy_k = scheduler.add_noise(latents_k, noise[pick], t[pick])
    x0 = predict_x0(scheduler, noisy_k, pred[pick], t[pick])
    _, mask_logits = decode(vae, x0)
    return dual_loss(pred, target, mask_logits.float(), mask01[pick],
                     lambdas=(cfg.lambda_diffusion, cfg.lambda_bce, cfg.lambda_dice), smooth=cfg.dice_smooth,
                     weights=mask_weights(scheduler, t[pick], cfg.mask_loss_weighting))


def warm_up_mask_channels(vae, dataset, mask_params, cfg: FinetuneConfig, device) -> list[float]:
    """Teach the widened VAE its new mask weights before the LoRA starts: `mask_warmup_steps` steps of
    BCE + Dice between channel 4 of VAE.decode(VAE.encode(rgb, mask)) and the mask, on the training
    pairs (seeded batches), only the mask weights training (Adam, lr `mask_warmup_lr`). The VAE is
    then a working 4-channel autoencoder, so the mask terms of the joint loss start from a decoder
    that reads masks instead of pushing the UNet to repaint images for a mask row that cannot.
    Returns the per-step losses."""
    if not mask_params or cfg.mask_warmup_steps <= 0:
        return []
    optimizer = torch.optim.Adam(mask_params, lr=cfg.mask_warmup_lr)
    losses, step, epoch = [], 0, 0
    while step < cfg.mask_warmup_steps:
        for indices in epoch_batches(len(dataset), cfg.train_batch_size, cfg.seed + 7919, epoch):
            batch = torch.utils.data.default_collate([dataset[i] for i in indices])
            rgb, mask01 = batch["image"].to(device), batch["mask"].to(device)
            x = torch.cat([rgb, mask01 * 2 - 1], dim=1).to(vae.dtype)
            _, logits = decode(vae, vae.encode(x).latent_dist.mode() * vae.config.scaling_factor)
            loss = bce_loss(logits.float(), mask01) + dice_loss(logits.float(), mask01, cfg.dice_smooth)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step >= cfg.mask_warmup_steps:
                break
        epoch += 1
    for p in mask_params:
        p.grad = None
    return losses


def mask_state_dict(vae) -> dict[str, torch.Tensor]:
    """The widened VAE's mask-channel layers (what trains in the VAE)."""
    return {f"encoder.conv_in.{k}": v.detach().cpu().contiguous() for k, v in vae.encoder.conv_in.state_dict().items()} | \
        {f"decoder.conv_out.{k}": v.detach().cpu().contiguous() for k, v in vae.decoder.conv_out.state_dict().items()}


def load_mask_state_dict(vae, sd: dict[str, torch.Tensor]) -> None:
    vae.encoder.conv_in.load_state_dict({k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith("encoder.")})
    vae.decoder.conv_out.load_state_dict({k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith("decoder.")})


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of the trained weights, i.e. of a checkpoint's
    lora.safetensors + mask_channels.safetensors merged (what data-parallel processes compare)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def processes_agree(accelerator, unet, vae, step: int) -> list[str]:
    """Each process's weights_sha256 of its trained weights, in rank order; raises if they differ.
    A collective: every process calls it at the same step. Data-parallel replicas must hold the same
    weights after every update (averaged gradients, same optimizer); a difference means they drifted
    (a gradient that was not averaged, a non-deterministic start) and the checkpoint would be rank 0's
    model only."""
    mine = weights_sha256(lora_state_dict(accelerator.unwrap_model(unet)) | mask_state_dict(vae))
    hashes = gather_object([mine]) if accelerator.num_processes > 1 else [mine]
    if len(set(hashes)) > 1:
        raise RuntimeError(f"after step {step} the data-parallel processes hold different trained weights "
                           f"(sha256 per process: {', '.join(h[:12] for h in hashes)})")
    return hashes


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(out: Path, step: int, epoch: int, batch_in_epoch: int, unet, vae, optimizer, lr_sched,
                    cfg: FinetuneConfig, digest: str, process_hashes: list[str] | None = None) -> Path:
    """checkpoint-<step>/: LoRA + mask layers (safetensors), optimizer + LR schedule, position, and the
    number of data-parallel processes with each one's weights_sha256 (`processes_agree`).
    Written to a temp folder and renamed, so a kill never leaves a half checkpoint."""
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in lora_state_dict(unet).items()}, tmp / "lora.safetensors")
    save_file(mask_state_dict(vae), tmp / "mask_channels.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_sched.state_dict()}, tmp / "optim.pt")
    process_hashes = process_hashes or []
    (tmp / "state.json").write_text(json.dumps({"global_step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                                "dataset_digest": digest, "config": asdict(cfg),
                                                "num_processes": max(1, len(process_hashes)),
                                                "weights_sha256_per_process": process_hashes}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    if cfg.checkpoints_total_limit > 0:
        for old in sorted(checkpoints(out), key=lambda p: int(p.name.split("-")[1]))[:-cfg.checkpoints_total_limit]:
            shutil.rmtree(old)
    return final


def checkpoints(out: Path) -> list[Path]:
    return [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[1].isdigit()]


def find_checkpoint(out: Path, spec: str) -> Path:
    if spec != "latest":
        path = Path(spec)
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"{path}: not a checkpoint folder (no state.json)")
        return path
    found = sorted(checkpoints(out), key=lambda p: int(p.name.split("-")[1]))
    if not found:
        raise FileNotFoundError(f"--resume-from-checkpoint latest: no checkpoint-<step> folder in {out}")
    return found[-1]


def load_checkpoint(path: Path, unet, vae, optimizer, lr_sched, cfg: FinetuneConfig, digest: str,
                    num_processes: int = 1) -> dict:
    state = json.loads((path / "state.json").read_text())
    old = state["config"]
    differ = [k for k, v in asdict(cfg).items() if k not in RESUME_MAY_DIFFER and old.get(k) != v]
    if differ or state["dataset_digest"] != digest:
        what = ", ".join(f"{k}: {old.get(k)!r} -> {getattr(cfg, k)!r}" for k in differ) or "the dataset digest"
        raise ConfigError(f"{path}: cannot resume, the run differs from the checkpoint in {what}; give another "
                          "--output-dir (or remove that folder's checkpoints) to start afresh")
    if state.get("num_processes", 1) != num_processes:     # the batches of step s depend on it
        raise ConfigError(f"{path}: cannot resume, it was written by a run of {state.get('num_processes', 1)} "
                         f"data-parallel process(es) and this run has {num_processes} (train_batch_size is per "
                         "process, so the batches would differ); launch it with the same --num_processes")
    set_lora_state_dict(unet, load_file(path / "lora.safetensors"))
    load_mask_state_dict(vae, load_file(path / "mask_channels.safetensors"))
    optim = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    lr_sched.load_state_dict(optim["lr_scheduler"])
    return state


# ------------------------------------------------------------------ validation grid
@torch.no_grad()
def validation_grid(pipe: DualGenPipeline, classes: list[str], cfg: FinetuneConfig) -> Image.Image:
    """One column per class (fixed seeds): generated image on top, its mask below."""
    prompts = [cfg.prompt_template.format(class_name=c) for c in classes]
    pairs = pipe(prompts, seeds=[cfg.seed + i for i in range(len(classes))], num_inference_steps=cfg.validation_steps,
                 guidance_scale=1.22, height=cfg.resolution, width=cfg.resolution, batch_size=8, progress=False)
    return pair_grid(pairs)


# ------------------------------------------------------------------ the stage
def check_config(cfg: FinetuneConfig) -> None:
    """Every option's range, before any model or data loads (one line naming the option)."""
    checks.multiple_of(cfg, 8, "resolution")
    checks.at_least(cfg, 1, "train_batch_size", "epochs", "lora_rank", "gradient_accumulation_steps",
                    "validation_steps", "checkpoints_total_limit")
    checks.at_least(cfg, 0, "max_train_steps", "lr_warmup_steps", "mask_warmup_steps", "mask_loss_samples",
                    "num_workers", "validation_epochs", "checkpointing_steps",      # 0 = only at the end / none
                    "lambda_diffusion", "lambda_bce", "lambda_dice", "adam_weight_decay")
    for name in ("learning_rate", "lora_alpha", "mask_warmup_lr", "dice_smooth"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{checks.option(name)} must be > 0, got {getattr(cfg, name)}")
    checks.within(cfg, 0, 1, "prompt_dropout")
    for name in ("mixed_precision", "lr_scheduler", "mask_loss_weighting", "caption_source"):
        checks.one_of(cfg, name)
    if not [t for t in cfg.lora_targets.split(",") if t.strip()]:
        raise ConfigError("--lora-targets must name at least one module (e.g. to_q,to_k,to_v,to_out.0)")


def finetune(cfg: FinetuneConfig, experiment: str | None = None, progress: bool = True,
             stop_after_step: int | None = None) -> str:
    """Run the fine-tune as one MLflow run; return its run id. `stop_after_step` simulates a kill
    (KeyboardInterrupt after that step's checkpointing) for the resume test."""
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    # accelerate keeps one mixed-precision state per process and refuses a second Accelerator with
    # another setting (a bf16 finetune after an fp32 one in the same process: tests, the bench, a
    # notebook); the distributed part of the state (PartialState) is kept
    AcceleratorState._reset_state()
    # launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a host without an
    # accelerator: accelerate only starts its gloo (CPU) group when told cpu=True, and would otherwise
    # run N independent single-process trainings (N MLflow runs writing the same checkpoints)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              cpu=launched > 1 and not torch.accelerator.is_available())
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(f"launched as {launched} processes but accelerate set up "
                           f"{accelerator.num_processes} ({accelerator.distributed_type})")
    device = accelerator.device
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    prepared = load_prepared(cfg.data_dir, "auto", cfg.test_fraction, cfg.seed, progress=progress and is_main)
    train = prepared.dataset.split("train")
    classes = train.classes
    captions = captions_for(train.samples, cfg)

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
    base = load_base(cfg.base_model, cfg.revision, dtype=weight_dtype)
    unet, vae, scheduler = base.unet, widen_vae(base.vae), base.scheduler
    add_lora(unet, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=tuple(cfg.lora_targets.split(",")))
    mask_params = mask_trainable_parameters(vae) if cfg.train_mask_channels else []
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    for p in lora_params + mask_params:        # trained weights stay fp32 under mixed precision
        p.data = p.data.float()
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    counts = trainable_summary(unet, vae, base.text_encoder)
    unet_counts = trainable_summary(unet)
    unet.to(device), vae.to(device), base.text_encoder.to(device)
    prompt_cache = PromptCache(base.tokenizer, base.text_encoder)

    dataset = PairDataset(train.samples, cfg.resolution, paired_augmentation() if cfg.augment else None,
                          image_norm="minus1_1", classes=classes, captions=captions, seed=cfg.seed)
    global_batch = cfg.train_batch_size * world        # train_batch_size is per process
    updates_per_epoch = math.ceil(math.ceil(len(dataset) / global_batch) / cfg.gradient_accumulation_steps)
    max_steps = cfg.max_train_steps or cfg.epochs * updates_per_epoch
    # no weight decay on the VAE layers: it would shrink their frozen RGB parts (their gradient is 0)
    optimizer = torch.optim.AdamW([{"params": lora_params}, {"params": mask_params, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, weight_decay=cfg.adam_weight_decay)
    # accelerate's prepared scheduler advances `world` times per update (it assumes the per-process
    # batch); the schedule is stretched alike so it spans max_steps updates
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps * world,
                             num_training_steps=max_steps * world)
    # The VAE is not wrapped (only its two mask layers train); with several processes their gradients
    # are averaged by hand below, the LoRA ones by accelerate's DDP wrapper of the UNet.
    unet, optimizer, lr_sched = accelerator.prepare(unet, optimizer, lr_sched)
    out = output_dir_for(cfg)
    out.mkdir(parents=True, exist_ok=True)

    step, start_epoch, skip_batches = 0, 0, 0
    warmup_losses = []
    # the same command again in the same folder continues its checkpoints (it never starts at step 0
    # over them: the checkpoint limit would then delete them); a checkpoint of other settings is refused
    resume = cfg.resume_from_checkpoint or ("latest" if checkpoints(out) else "")
    if resume:
        ckpt = find_checkpoint(out, resume)
        state = load_checkpoint(ckpt, accelerator.unwrap_model(unet), vae, optimizer,
                                lr_sched, cfg, prepared.digest, num_processes=world)
        step, start_epoch, skip_batches = state["global_step"], state["epoch"], state["batch_in_epoch"]
    else:   # a resumed run has its warmed-up (and since trained) mask weights from the checkpoint
        vae.to(device)
        warmup_losses = warm_up_mask_channels(vae, dataset, mask_params, cfg, device)
    if world > 1:   # every process warmed up alike; rank 0's weights are the start (as DDP does for the UNet)
        for p in mask_params:
            broadcast(p.data, from_process=0)

    run_ctx = tracking.stage_run(STAGE_FINETUNE, cfg, prepared.digest, experiment) if is_main else contextlib.nullcontext()
    with run_ctx as run:
        if is_main:
            mlflow.set_tag(TAG_OUTPUT_DIR, str(out.resolve()))
            mlflow.set_tags({TAG_BASE_MODEL: base.info["model_id"], TAG_BASE_REVISION: base.info["revision"],
                             TAG_PREDICTION_TYPE: base.info["prediction_type"], TAG_NUM_PROCESSES: str(world)})
            if resume:
                mlflow.set_tag(TAG_RESUMED_FROM, str(ckpt))
                mlflow.log_metric("resumed_from_step", step)
                print(f"finetune: resuming from {ckpt} (step {step} of {max_steps})", flush=True)
            log_dataset_input(prepared, context="training")
            if warmup_losses:
                mlflow.tracking.MlflowClient().log_batch(run.info.run_id, metrics=[
                    mlflow.entities.Metric("train/mask_warmup_loss", v, int(time.time() * 1000), i + 1)
                    for i, v in enumerate(warmup_losses)])
            mlflow.log_metrics({"params/trainable": counts["trainable"], "params/total": counts["total"],
                                "params/trainable_share_pct": 100 * counts["trainable_share"],
                                "params/reduction_pct": counts["reduction_pct"],
                                "params/unet_trainable_share_pct": 100 * unet_counts["trainable_share"],
                                "max_train_steps": max_steps, "n_train_images": len(dataset)})
        bar = tqdm(total=max_steps, initial=step, desc="finetune", unit="step", disable=not (progress and is_main))
        epoch = start_epoch
        unet.train()
        t0 = time.perf_counter()
        metrics = MetricBuffer(run.info.run_id, hint=f"; the checkpoints in {out} are kept: run the same command "
                               "again once the store answers, and it resumes") if is_main else None
        try:
            while step < max_steps:
                dataset.set_epoch(epoch)
                batches = epoch_batches(len(dataset), global_batch, cfg.seed, epoch,
                                        [s.label for s in train.samples] if cfg.class_balanced else None)
                for b, indices in enumerate(batches):
                    if epoch == start_epoch and b < skip_batches:
                        continue
                    # this process's share of the global batch; a last batch smaller than `world` gives
                    # the processes without a sample its first one (DDP needs every process to step)
                    mine = indices[rank::world] or indices[:1]
                    batch = torch.utils.data.default_collate([dataset[i] for i in mine])
                    with accelerator.accumulate(unet):
                        losses = training_step(batch, unet, vae, scheduler, prompt_cache,
                                               cfg, step, device, rank=rank)
                        shown = losses      # what is logged and checked: with several processes their means,
                        if world > 1:       # so that a NaN in one stops all of them at the same step
                            shown = dict(zip(losses, accelerator.reduce(
                                torch.stack([v.detach() for v in losses.values()]), reduction="mean").unbind()))
                        if not torch.isfinite(shown["loss"]):
                            raise NonFiniteLossError(
                                f"non-finite loss at step {step}: " +
                                ", ".join(f"{k}={v.item():.4g}" for k, v in shown.items()) +
                                " (lower --learning-rate, or use bf16 instead of fp16)")
                        accelerator.backward(losses["loss"])
                        if world > 1 and accelerator.sync_gradients:
                            for p in mask_params:
                                if p.grad is not None:
                                    p.grad = accelerator.reduce(p.grad, reduction="mean")
                        optimizer.step()
                        lr_sched.step()
                        optimizer.zero_grad(set_to_none=True)
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{shown['loss'].item():.4f}")
                    if is_main and cfg.log_every and step % cfg.log_every == 0:
                        metrics.add({f"train/{k}": v.item() for k, v in shown.items()} |
                                    {"train/lr": lr_sched.get_last_lr()[0]}, step)
                    if cfg.checkpointing_steps and step % cfg.checkpointing_steps == 0:
                        hashes = processes_agree(accelerator, unet, vae, step)     # every process
                        if is_main:
                            save_checkpoint(out, step, epoch, b + 1, accelerator.unwrap_model(unet),
                                            vae, optimizer, lr_sched, cfg, prepared.digest, hashes)
                    if stop_after_step is not None and step >= stop_after_step:
                        raise KeyboardInterrupt(f"stopped after step {step}")
                    if step >= max_steps:
                        break
                epoch += 1
                if is_main and cfg.validation_epochs and epoch % cfg.validation_epochs == 0 and step < max_steps:
                    _log_validation(accelerator, unet, vae, base, classes, cfg, step)
        finally:
            if metrics is not None:
                metrics.close()
        bar.close()
        hashes = processes_agree(accelerator, unet, vae, step)
        if not is_main:     # rank 0 alone logs and saves the (identical) model
            return ""
        mlflow.log_metric(METRIC_TRAIN_SECONDS, time.perf_counter() - t0)
        _log_validation(accelerator, unet, vae, base, classes, cfg, step)
        model_dir = save_model(accelerator, unet, vae, base, cfg, classes, train.class_counts(), prepared.digest, out,
                               hashes)
        log_model(model_dir)
        mlflow.flush_async_logging()
        return run.info.run_id


def _pipeline(accelerator, unet, vae, base) -> DualGenPipeline:
    return DualGenPipeline(accelerator.unwrap_model(unet), vae, base.text_encoder,
                           base.tokenizer, base.scheduler, base_info=base.info)


def _log_validation(accelerator, unet, vae, base, classes, cfg, step):
    unet.eval()
    grid = validation_grid(_pipeline(accelerator, unet, vae, base), classes, cfg)
    mlflow.log_image(grid, key="validation", step=step)
    unet.train()


def save_model(accelerator, unet, vae, base, cfg, classes, class_counts, digest, out: Path,
               process_hashes: list[str] | None = None) -> Path:
    """The model folder (DualGenPipeline format) + training.json + mask-channel weights + config (and,
    as in a checkpoint, the number of data-parallel processes and each one's weights_sha256)."""
    model_dir = out / "model"
    tmp = out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    _pipeline(accelerator, unet, vae, base).save(tmp)
    save_file(mask_state_dict(vae), tmp / "mask_channels.safetensors")
    (tmp / TRAINING_JSON).write_text(json.dumps({
        "classes": classes, "class_counts": class_counts, "prompt_template": cfg.prompt_template,
        "profile": getattr(cfg, "profile_choice", ("",))[0],           # generate --profile auto takes it
        "dataset_digest": digest, "resolution": cfg.resolution, "config": asdict(cfg),
        "num_processes": max(1, len(process_hashes or [])), "weights_sha256_per_process": process_hashes or [],
    }, indent=1))
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    return model_dir


def log_model(model_dir: Path) -> None:
    """Log the folder as artifacts and as an MLflow pyfunc model `model` (runs:/<id>/model)."""
    from harness.dualgen.mlflow_model import log_dualgen_model
    mlflow.log_artifacts(str(model_dir), "dualgen")
    log_dualgen_model(model_dir)


def summarize_losses(run_id: str, metric: str = "train/loss") -> dict[str, float]:
    """Mean of a loss curve (default: the combined loss) over its first and last fifth of steps."""
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, metric)
    values = np.array([m.value for m in sorted(history, key=lambda m: m.step)])
    k = max(1, len(values) // 5)
    return {"first": float(values[:k].mean()), "last": float(values[-k:].mean()), "n": len(values)}
