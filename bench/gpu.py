"""The GPU check (`python -m bench.run --device cuda`): the paper's sizes on one accelerator, as JSON.

Rows (each a section of its own; one failing section is recorded and the others still run):
  sd2_finetune      the real `finetune` stage on an SD2-base-shaped model (random weights: memory and
                    speed are those of the real architecture, nothing is downloaded), 512 px, batch 4,
                    bf16 + gradient checkpointing: peak allocated GiB (target < 16) and s/step (median
                    of the steps after the first two; each step timed from one training_step call to
                    the next, so the backward pass and the optimizer step are in it)
  sd2_generate      DualGenPipeline (RGB + mask) with the LoRA unfused, and with it fused as `generate`
                    loads it (on a copy of the UNet), vs the stock StableDiffusionPipeline (3-channel
                    VAE, PIL output, unfused LoRA) on the same SD2-shaped UNet, 512 px, 45 DDIM steps,
                    guidance 1.22, batch 4, bf16: images/s each and the time ratios to the stock
  sd2_generate_compiled  the fused pipeline with its UNet under torch.compile (`generate --compile-unet
                    true`) vs the same stock pipeline, same sizes: images/s, the time ratio and the
                    one-off compile seconds (its own section: a failing compile loses no other row)
  classify_epoch    one training epoch of each paper classifier at 224 px, batch 32, on the demo set
                    (autocast bf16 on GPU): seconds and images/s

`--smoke` runs the same code with the tiny model at 64 px and classifiers at 32 px, on any device:
the check that this file works, before it is spent on a GPU.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


@contextmanager
def tracking_store(tmp: str):
    """MLFLOW_TRACKING_URI pointed at a fresh sqlite store in `tmp`, restored after."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/m.db"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def components(smoke: bool, device: str) -> dict:
    """The tiny model (smoke) or the SD2-shaped one, its weights made on `device` (fast random init)."""
    from harness.dualgen.tiny import build_sd2_shaped_components, build_tiny_components
    with torch.device(device):
        return build_tiny_components(0) if smoke else build_sd2_shaped_components()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------
def sd2_finetune(device: str, smoke: bool, resolution: int, batch: int, steps: int) -> dict:
    """The `finetune` stage on the SD2-shaped base: peak GiB and s/step."""
    from harness.config import FinetuneConfig
    from harness.data.demo import make_demo_dataset
    from harness.dualgen import train as T
    from harness.dualgen.tiny import save_components
    calls: list[float] = []
    original = T.training_step

    def timed_step(*args, **kwargs):
        synchronize(device)
        calls.append(time.perf_counter())
        return original(*args, **kwargs)

    with tempfile.TemporaryDirectory() as tmp, tracking_store(tmp):
        base = save_components(components(smoke, device), f"{tmp}/base")
        data = make_demo_dataset(f"{tmp}/demo", seed=0, per_class=4)
        cfg = FinetuneConfig(data_dir=str(data), base_model=str(base), resolution=resolution, train_batch_size=batch,
                             max_train_steps=steps, mixed_precision="bf16" if device == "cuda" else "no",
                             gradient_checkpointing=True, mask_warmup_steps=20, validation_epochs=0,
                             validation_steps=2, checkpointing_steps=0, output_dir=f"{tmp}/out", test_fraction=0.25)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        T.training_step = timed_step
        t0 = time.perf_counter()
        try:
            T.finetune(cfg, experiment="bench", progress=False)
        finally:
            T.training_step = original
        seconds = time.perf_counter() - t0
    step_times = np.diff(calls)[2:]                      # the first two steps warm up kernels
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {"resolution": resolution, "batch": batch, "steps": steps, "precision": cfg.mixed_precision,
            "gradient_checkpointing": True, "peak_gib": peak, "target_peak_gib": 16.0,
            "ok": bool(device != "cuda" or peak < 16.0),
            "s_per_step": float(np.median(step_times)) if len(step_times) else None,
            "stage_seconds": seconds}


# ------------------------------------------------------------------------------------------------
def sd2_generate(device: str, smoke: bool, resolution: int, steps: int, batch: int, repeats: int,
                 compiled: bool = False) -> dict:
    """DualGenPipeline vs the stock pipeline on the same UNet (with LoRA) and text encoder: unfused and
    fused, or (compiled) fused with the UNet compiled."""
    from diffusers import StableDiffusionPipeline

    from harness.config import PROMPT_TEMPLATE
    from harness.dualgen.lora import add_lora
    from harness.dualgen.pipeline import DualGenPipeline
    from harness.dualgen.vae4 import widen_vae
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    c = components(smoke, device)
    vae3 = copy.deepcopy(c["vae"])                      # the stock pipeline's 3-channel VAE
    add_lora(c["unet"])
    vae4 = widen_vae(c["vae"])
    for m in (c["unet"], c["text_encoder"], vae4, vae3):
        m.to(device, dtype)
    ours = DualGenPipeline(c["unet"], vae4, c["text_encoder"], c["tokenizer"], c["scheduler"])
    fused = DualGenPipeline(copy.deepcopy(c["unet"]), vae4, c["text_encoder"], c["tokenizer"], c["scheduler"])
    synchronize(device)
    t0 = time.perf_counter()
    fused.fuse_lora()                                   # what `generate` does once after loading
    synchronize(device)
    fuse_s = time.perf_counter() - t0
    stock = StableDiffusionPipeline(vae=vae3, text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=c["unet"],
                                    scheduler=ours.scheduler.__class__.from_config(c["scheduler"].config),
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    prompts = [PROMPT_TEMPLATE.format(class_name="melanoma")] * batch

    def dualgen(pipe):
        def run(i):
            pipe(prompts, seeds=list(range(i, i + batch)), num_inference_steps=steps, guidance_scale=1.22,
                 height=resolution, width=resolution, batch_size=batch, progress=False)
        return run

    def run_stock(i):
        stock(prompts, num_inference_steps=steps, guidance_scale=1.22, height=resolution, width=resolution,
              generator=[torch.Generator().manual_seed(i + k) for k in range(batch)], output_type="pil")

    if compiled:                                        # unfused ours not timed
        runs = {"compiled": dualgen(fused.compile_unet()), "stock": run_stock}
    else:
        runs = {"ours": dualgen(ours), "fused": dualgen(fused), "stock": run_stock}
    times, warm_s = {name: [] for name in runs}, {}
    for name, fn in runs.items():                       # warm-up (the compiled UNet compiles in it)
        synchronize(device)
        t0 = time.perf_counter()
        fn(0)
        synchronize(device)
        warm_s[name] = time.perf_counter() - t0
    for i in range(1, repeats + 1):
        for name, fn in list(runs.items())[:: 1 if i % 2 else -1]:
            synchronize(device)
            t0 = time.perf_counter()
            fn(i)
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"resolution": resolution, "steps": steps, "batch": batch, "guidance_scale": 1.22, "dtype": str(dtype),
           "images_per_s_stock": batch / med["stock"], "repeats": repeats}
    if compiled:
        return out | {"images_per_s_ours_compiled": batch / med["compiled"], "compile_seconds": warm_s["compiled"],
                      "ratio_compiled_over_stock_time": med["compiled"] / med["stock"]}
    return out | {"images_per_s_ours": batch / med["ours"], "images_per_s_ours_fused": batch / med["fused"],
                  "ratio_ours_over_stock_time": med["ours"] / med["stock"],
                  "ratio_fused_over_stock_time": med["fused"] / med["stock"], "fuse_seconds": fuse_s}


# ------------------------------------------------------------------------------------------------
def classify_epoch(device: str, image_size: int, batch: int) -> dict:
    """One training epoch of each paper classifier on the demo train split (decode not timed)."""
    from harness.config import ClassifyConfig
    from harness.data.demo import make_demo_dataset
    from harness.data.prepare import load_prepared
    from harness.downstream import classify as C
    from harness.downstream import runtime
    dev = torch.device(device)
    amp = runtime.autocast_dtype("auto", dev)
    out = {"image_size": image_size, "batch": batch, "autocast": str(amp), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        train = load_prepared(str(make_demo_dataset(f"{tmp}/d", seed=0)), progress=False).dataset.split("train")
        images = C.decode_images(train.samples, image_size, progress=False)
    labels = np.array([train.classes.index(s.label) for s in train.samples])
    for name in C.MODELS:
        cfg = ClassifyConfig(model=name, image_size=image_size, batch_size=batch)
        model = runtime.prepare_model(C.build_model(name, len(train.classes), image_size), dev)
        opt = runtime.adam(model, cfg.learning_rate)
        scaler = runtime.grad_scaler(dev, amp)
        dl = runtime.loader(C.ImageSet(images, labels, augment=True), batch, True, 0, 0, dev, train=True)
        C.train_one_epoch(model, dl, opt, scaler, dev, amp)          # warm-up epoch (kernels, allocator)
        synchronize(device)
        t0 = time.perf_counter()
        C.train_one_epoch(model, dl, opt, scaler, dev, amp)
        synchronize(device)
        seconds = time.perf_counter() - t0
        n = min(len(images), len(dl) * batch)             # the last short batch is counted as it is
        out["models"][name] = {"epoch_seconds": seconds, "images_per_s": n / seconds, "images": n}
    return out


# ------------------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import diffusers
    import transformers
    info = {"device": device, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return info


def run_checks(device: str, out_path: str, smoke: bool = False) -> dict:
    """Every section in turn; the JSON is rewritten after each, so a killed run keeps what it measured."""
    sizes = ({"finetune": (64, 2, 6), "generate": (64, 4, 2, 2), "classify": (32, 16)} if smoke else
             {"finetune": (512, 4, 12), "generate": (512, 45, 4, 3), "classify": (224, 32)})
    sections = {
        "sd2_finetune": lambda: sd2_finetune(device, smoke, *sizes["finetune"]),
        "sd2_generate": lambda: sd2_generate(device, smoke, *sizes["generate"]),
        "sd2_generate_compiled": lambda: sd2_generate(device, smoke, *sizes["generate"], compiled=True),
        "classify_epoch": lambda: classify_epoch(device, *sizes["classify"]),
    }
    result = {"environment": environment(device), "smoke": smoke}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    for name, fn in sections.items():
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:          # recorded: the other sections still run
            traceback.print_exc()
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        result[name]["section_seconds"] = time.perf_counter() - t0
        print(json.dumps(result[name], indent=1), flush=True)
        result["total_seconds"] = time.perf_counter() - t_all
        Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
        if device == "cuda":
            torch.cuda.empty_cache()
    return result
