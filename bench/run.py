"""Benchmarks: our costly steps side by side with a baseline doing the same work, in one process.

    python -m bench.run                 # CPU, demo sizes, prints a table, exit 1 if a target is missed
    python -m bench.run --device cuda   # the same on a GPU (adds the SD2-size memory row)

Each row times ours and the baseline interleaved (A B A B ...) and compares medians, so machine load
hits both alike. Rows:
  finetune_step_{64,256}px  our 4-channel step (diffusion + BCE + Dice) vs a plain diffusers-style
                            LoRA step (3-channel VAE, MSE only), batch 4, tiny SD2-shaped model
  mask_subset_*             the demo fine-tune (300 steps, 64 px) with the mask loss on one sample per
                            batch (our default; the same loss in expectation) vs on the whole batch:
                            the mask loss at the end, per step and at equal loop time, and the loop
                            time; no target (evidence, not a gate); curves -> bench/results/*.png
  text_encoder_cache        PromptCache lookup vs encoding the batch's prompts every step
  generate_batch{1,4,16}    DualGenPipeline (RGB + mask) vs StableDiffusionPipeline (RGB, PIL output),
                            same size, steps, guidance and batch; images/s reported
  tracking_overhead         finetune loop time with per-step async MLflow logging vs logging off
  evaluate_cached_real_stats  evaluate against a real set whose statistics are cached vs the first time
  *_data_wait_*             share of an epoch spent waiting for data (classify 224 px, segment 256 px)
  peak_{rss,gpu_alloc}_*     peak memory of two finetune steps / generation calls at 256 px (ours vs the
                            same baselines) above what the process held before them, each in a fresh
                            process (imports alone hold ~2.9 GB here, so absolute peaks would hide it)
  peak_gpu_sd2_512px_batch4 (--device cuda only) `finetune` on an SD2-base-shaped model, bf16 +
                            gradient checkpointing, 512 px, batch 4: peak allocated, target < 16 GiB
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")       # STACK-NOTES: the stable choice on 2 cores; --threads
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROWS: list[dict] = []


def row(name, ours, baseline, target, unit="s", note=""):
    ratio = ours / baseline if baseline else float("nan")
    ok = target is None or ratio <= target
    ROWS.append(dict(name=name, ours=ours, baseline=baseline, ratio=ratio, target=target, ok=ok, unit=unit, note=note))
    print(f"  {name}: ours {ours:.4g}{unit}, baseline {baseline:.4g}{unit}, ratio {ratio:.3f}"
          f"{'' if target is None else f' (target <= {target})'} {note}", flush=True)


def interleaved(fa, fb, repeats):
    fa(0), fb(0)                                     # warm-up
    ta, tb = [], []
    for i in range(1, repeats + 1):
        t0 = time.perf_counter(); fa(i); ta.append(time.perf_counter() - t0)   # noqa: E702
        t0 = time.perf_counter(); fb(i); tb.append(time.perf_counter() - t0)   # noqa: E702
    return statistics.median(ta), statistics.median(tb)


def tiny(device):
    from harness.dualgen.tiny import build_tiny_components
    c = build_tiny_components(seed=0)
    for k in ("unet", "vae", "text_encoder"):
        c[k].to(device)
    return c


PROMPT = "a dermoscopic lesion photo of melanoma for skin cancer diagnosis"


def finetune_step_pair(device, resolution):
    """(ours, baseline, extras): one training step each, batch 4, on copies of the same tiny base."""
    from harness.config import FinetuneConfig
    from harness.dualgen.base import PromptCache
    from harness.dualgen.lora import add_lora
    from harness.dualgen.train import training_step
    from harness.dualgen.vae4 import mask_trainable_parameters, widen_vae
    c, base3 = tiny(device), tiny(device)
    unet, vae, sch = c["unet"], widen_vae(c["vae"]), c["scheduler"]
    add_lora(unet)
    add_lora(base3["unet"])
    opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad] + mask_trainable_parameters(vae), 1e-4)
    opt3 = torch.optim.AdamW([p for p in base3["unet"].parameters() if p.requires_grad], 1e-4)
    cache = PromptCache(c["tokenizer"], c["text_encoder"])
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 3, resolution, resolution, generator=g) * 2 - 1,
             "mask": (torch.rand(4, 1, resolution, resolution, generator=g) > 0.5).float(), "caption": [PROMPT] * 4}
    cfg = FinetuneConfig()

    def ours(step):
        losses = training_step(batch, unet, vae, sch, cache, cfg, step, device)
        losses["loss"].backward(); opt.step(); opt.zero_grad()   # noqa: E702

    def baseline(step):      # diffusers' train_text_to_image_lora.py step, 3 channels, MSE only
        gen = torch.Generator().manual_seed(step)
        with torch.no_grad():
            lat = base3["vae"].encode(batch["image"].to(device)).latent_dist.sample(generator=gen)
            lat = lat * base3["vae"].config.scaling_factor
        noise = torch.randn(lat.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (4,), generator=gen).to(device)
        pred = base3["unet"](sch.add_noise(lat, noise, t), t, encoder_hidden_states=cache(batch["caption"])).sample
        torch.nn.functional.mse_loss(pred, noise).backward(); opt3.step(); opt3.zero_grad()   # noqa: E702

    return ours, baseline, (c, cache, batch)


def bench_finetune_step(device, resolution, repeats):
    ours, baseline, (c, cache, batch) = finetune_step_pair(device, resolution)
    ours_t, base_t = interleaved(ours, baseline, repeats)
    row(f"finetune_step_{resolution}px", ours_t, base_t, 1.5)
    if resolution == 64:
        from harness.dualgen.base import encode_prompts
        enc = lambda i: encode_prompts(c["tokenizer"], c["text_encoder"], batch["caption"])   # noqa: E731
        look = lambda i: cache(batch["caption"])                                                # noqa: E731
        a, b = interleaved(look, enc, 20)
        row("text_encoder_cache", a, b, 1.0, note="(cached lookup vs encoding each step; SD2's encoder is ~350M params)")


def generate_pair(device, batch, steps=20, resolution=64):
    """(ours, baseline): one generation call each, same prompts, seeds, steps, guidance and size."""
    from diffusers import StableDiffusionPipeline
    from harness.dualgen.lora import add_lora
    from harness.dualgen.pipeline import DualGenPipeline
    from harness.dualgen.vae4 import widen_vae
    c, c3 = tiny(device), tiny(device)
    add_lora(c["unet"])
    add_lora(c3["unet"])
    ours_pipe = DualGenPipeline(c["unet"], widen_vae(c["vae"]), c["text_encoder"], c["tokenizer"], c["scheduler"])
    sd = StableDiffusionPipeline(vae=c3["vae"], text_encoder=c3["text_encoder"], tokenizer=c3["tokenizer"],
                                 unet=c3["unet"], scheduler=ours_pipe.scheduler.__class__.from_config(c3["scheduler"].config),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    prompts = [PROMPT] * batch

    def ours(i):
        ours_pipe(prompts, seeds=list(range(i, i + batch)), num_inference_steps=steps, guidance_scale=1.22,
                  height=resolution, width=resolution, batch_size=batch, progress=False)

    def baseline(i):
        sd(prompts, num_inference_steps=steps, guidance_scale=1.22, height=resolution, width=resolution,
           generator=[torch.Generator().manual_seed(i + k) for k in range(batch)], output_type="pil")

    return ours, baseline


def bench_generate(device, batch, steps=20, resolution=64):
    a, b = interleaved(*generate_pair(device, batch, steps, resolution), 3 if batch < 16 else 2)
    row(f"generate_batch{batch}", a, b, 1.05, note=f"({batch / a:.1f} images/s ours, {batch / b:.1f} baseline)")


def bench_tracking(device):
    from harness.config import FinetuneConfig
    from harness.data.demo import make_demo_dataset
    from harness.dualgen.tiny import build_tiny_components, save_components
    import mlflow
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/m.db"
        from harness.dualgen.train import finetune
        base = save_components(build_tiny_components(0), f"{tmp}/base")
        data = make_demo_dataset(f"{tmp}/demo", seed=0, per_class=4, min_size=32, max_size=48)
        # pairs of runs, logging on and off, the order alternating; the median of the pair ratios
        # (run-to-run noise here is +-4 %, the effect measured is ~0.5 %: a min over runs was noise)
        ratios, times = [], {0: [], 1: []}
        for rep in range(5):
            for log_every in ((1, 0) if rep % 2 == 0 else (0, 1)):
                cfg = FinetuneConfig(data_dir=str(data), base_model=str(base), resolution=32, max_train_steps=60,
                                     validation_epochs=0, checkpointing_steps=0, log_every=log_every,
                                     output_dir=f"{tmp}/o{rep}{log_every}", test_fraction=0.25)
                run_id = finetune(cfg, experiment="bench", progress=False)
                times[log_every].append(mlflow.get_run(run_id).data.metrics["train/seconds"])
            ratios.append(times[1][-1] / times[0][-1])
        print(f"    loop seconds, logging on: {[round(t, 2) for t in times[1]]}, off: {[round(t, 2) for t in times[0]]}")
        i = ratios.index(statistics.median(ratios))
        row("tracking_overhead", times[1][i], times[0][i], 1.03,
            note="(60-step runs, the median of 5 on/off pairs, order alternating)")


def bench_mask_subset_curves(out_dir, steps=300):
    """Training curves of the demo fine-tune with `mask_loss_samples` = 1 (default) and 0 (whole batch),
    same seed and data. Each logged BCE/Dice of the subset is an unbiased estimate of that step's
    whole-batch value, but its gradient is noisier: per step the mask loss falls more slowly, per second
    of training it falls as fast or faster. Both views are printed and plotted."""
    import mlflow
    from pathlib import Path

    from harness.config import FinetuneConfig
    from harness.data.demo import make_demo_dataset
    from harness.dualgen.train import finetune
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/m.db"
        data = make_demo_dataset(f"{tmp}/demo", seed=0)
        curves, seconds = {}, {}
        for k in (1, 0):
            cfg = FinetuneConfig(data_dir=str(data), base_model="tiny", resolution=64, max_train_steps=steps,
                                 validation_epochs=0, checkpointing_steps=0, mask_loss_samples=k,
                                 output_dir=f"{tmp}/o{k}")
            run_id = finetune(cfg, experiment="bench", progress=False)
            client = mlflow.tracking.MlflowClient()
            curves[k] = {m: np.array([x.value for x in sorted(client.get_metric_history(run_id, f"train/{m}"),
                                                               key=lambda x: x.step)])
                         for m in ("loss_diffusion", "loss_bce", "loss_dice")}
            seconds[k] = mlflow.get_run(run_id).data.metrics["train/seconds"]
    fifths = lambda a: [float(c.mean()) for c in np.array_split(a, 5)]   # noqa: E731
    print("    mean per fifth of training (1 sample | whole batch):")
    for m in ("loss_diffusion", "loss_bce", "loss_dice"):
        print(f"      {m:15s} " + "  ".join(f"{a:.3f}|{b:.3f}" for a, b in zip(fifths(curves[1][m]), fifths(curves[0][m]))))
    mask = {k: c["loss_bce"] + c["loss_dice"] for k, c in curves.items()}
    same_time = round(steps * seconds[1] / seconds[0])        # whole-batch steps done in the subset's loop time
    row("mask_subset_mask_loss_per_step", float(mask[1][-steps // 5:].mean()), float(mask[0][-steps // 5:].mean()), None,
        unit="", note=f"(BCE + Dice, steps {steps - steps // 5}-{steps}: 1 sample vs whole batch, same steps)")
    row("mask_subset_mask_loss_same_time", float(mask[1][-steps // 5:].mean()),
        float(mask[0][same_time - steps // 5:same_time].mean()), None, unit="",
        note=f"(whole batch at steps {same_time - steps // 5}-{same_time}, reached in the same loop time)")
    row("mask_subset_finetune_time", seconds[1], seconds[0], None, note=f"(loop time of the same {steps} steps)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    smooth = lambda a, w=15: np.convolve(a, np.ones(w) / w, mode="valid")   # noqa: E731
    for ax, m in zip(axes, ("loss_diffusion", "loss_bce", "loss_dice")):
        for k, label in ((1, "mask loss on 1 sample / batch (default)"), (0, "mask loss on the whole batch")):
            ax.plot(smooth(curves[k][m]), label=label)
        ax.set_title(f"train/{m} (moving mean of 15 steps)")
        ax.set_xlabel("step")
    for k in (1, 0):
        mm = smooth(mask[k])
        axes[3].plot(np.arange(len(mm)) * seconds[k] / steps, mm)
    axes[3].set_title("BCE + Dice against loop time")
    axes[3].set_xlabel("seconds")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(out_dir) / "mask_subset_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"    curves: {path}")


def bench_evaluate_cache():
    """`evaluate` of a fresh (uncached) fake set against a real set whose statistics are cached vs the
    first evaluation against it (which also extracts the real train split)."""
    import mlflow  # noqa: F401
    from harness.config import EvaluateConfig
    from harness.data.demo import make_demo_dataset
    from harness.quality import evaluate
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/m.db"
        real = make_demo_dataset(f"{tmp}/real", seed=0)
        fakes = [make_demo_dataset(f"{tmp}/fake{i}", seed=i + 1, per_class=4) for i in range(2)]
        times = []
        for fake in fakes:
            cfg = EvaluateConfig(real=str(real), fake=str(fake), lpips_pairs=100, cache_dir=f"{tmp}/cache")
            t0 = time.perf_counter()
            evaluate(cfg, experiment="bench", progress=False)
            times.append(time.perf_counter() - t0)
        row("evaluate_cached_real_stats", times[1], times[0], 0.55,
            note="(second evaluation vs first; 114 real train images, 28 fake)")


def bench_data_wait(device):
    """Share of a training epoch spent waiting for data (decode-once caches, default workers)."""
    import segmentation_models_pytorch as smp
    from harness.data.augment import PairDataset, paired_augmentation
    from harness.data.prepare import load_prepared
    from harness.downstream import classify as C
    from harness.downstream import runtime
    from harness.downstream import segment as S
    with tempfile.TemporaryDirectory() as tmp:
        from harness.data.demo import make_demo_dataset
        train = load_prepared(str(make_demo_dataset(f"{tmp}/d", seed=0)), progress=False).dataset.split("train")
        dev = torch.device(device)
        samples = train.samples[:64]
        labels = np.array([train.classes.index(s.label) for s in samples])
        images = C.decode_images(samples, 224, {}, progress=False)
        model = runtime.prepare_model(C.build_model("resnet34", len(train.classes), 224), dev)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        scaler = runtime.grad_scaler(dev, None)
        cls_loader = runtime.loader(C.ImageSet(images, labels, augment=True), 16, True, 0, 0, dev, train=True)
        C.train_one_epoch(model, cls_loader, opt, scaler, dev, None)              # warm-up
        t0 = time.perf_counter()
        _, step = C.train_one_epoch(model, cls_loader, opt, scaler, dev, None)
        total = time.perf_counter() - t0
        compute = step * len(cls_loader)
        row("classify_data_wait_224px", total - compute, total, 0.20, unit="s",
            note="(ours = epoch time not in steps, baseline = epoch time: ratio = waiting share)")
        seg = runtime.prepare_model(smp.Unet("resnet34", encoder_weights=None, classes=1), dev)
        opt = torch.optim.Adam(seg.parameters(), 1e-3)
        ds = PairDataset(samples[:32], 256, paired_augmentation(), image_norm="imagenet", seed=0)
        seg_loader = runtime.loader(ds, 8, True, 0, 0, dev, train=True)
        loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
        S.train_one_epoch(seg, seg_loader, loss, opt, scaler, dev, None)           # warm-up fills the cache
        t0 = time.perf_counter()
        _, step = S.train_one_epoch(seg, seg_loader, loss, opt, scaler, dev, None)
        total = time.perf_counter() - t0
        row("segment_data_wait_256px", total - step * len(seg_loader), total, 0.20, unit="s",
            note="(after the first epoch filled the decode cache)")


def peak_memory(kind, side, device):
    """Peak memory of one side's work above what the process held just before it (model weights,
    imports), in a fresh process: MiB of resident memory (CPU: the kernel's VmHWM, reset first) or
    of allocated CUDA memory."""
    code = f"import bench.run as b; b._memory_child({kind!r}, {side!r}, {device!r})"
    # A fixed mmap threshold: every large tensor is mapped and unmapped at once, so VmHWM is the peak of
    # live memory (glibc's adaptive threshold otherwise keeps freed blocks; peaks then varied +-40 %).
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode:
        raise RuntimeError(f"memory benchmark {kind}/{side} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _rss_mib(field):
    import re
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024


def _memory_child(kind, side, device):
    torch.set_num_threads(1)
    ours, baseline = (finetune_step_pair(device, 256)[:2] if kind == "finetune_step_256px" else
                      generate_pair(device, 4, steps=5, resolution=256))
    work = ours if side == "ours" else baseline
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        work(0), work(1)
        print((torch.cuda.max_memory_allocated() - before) / 2**20)
    else:
        with open("/proc/self/clear_refs", "w") as f:   # resets VmHWM to the current RSS
            f.write("5")
        before = _rss_mib("VmRSS")
        work(0), work(1)
        print(_rss_mib("VmHWM") - before)


def sd2_shaped_components(seed=0) -> dict:
    """SD2-base's architecture (stabilityai/stable-diffusion-2-base configs) with random weights:
    memory and speed are those of the real model; no download."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from harness.dualgen.tiny import build_tiny_components
    parts = build_tiny_components(seed)           # tokenizer (ids fit SD2's vocabulary) and scheduler
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512))
    return parts | {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def bench_sd2_memory(device, resolution=512, batch=4, steps=3):
    """The real `finetune` on an SD2-base-shaped model: bf16, gradient checkpointing, batch 4, 512 px;
    peak allocated CUDA memory (target < 16 GiB)."""
    from harness.config import FinetuneConfig
    from harness.data.demo import make_demo_dataset
    from harness.dualgen.tiny import save_components
    from harness.dualgen.train import finetune
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/m.db"
        base = save_components(sd2_shaped_components(), f"{tmp}/sd2")
        data = make_demo_dataset(f"{tmp}/demo", seed=0, per_class=4)
        cfg = FinetuneConfig(data_dir=str(data), base_model=str(base), resolution=resolution, train_batch_size=batch,
                             max_train_steps=steps, mixed_precision="bf16" if device == "cuda" else "no",
                             gradient_checkpointing=True, validation_epochs=0, validation_steps=2,
                             checkpointing_steps=0, output_dir=f"{tmp}/out", test_fraction=0.25)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        finetune(cfg, experiment="bench", progress=False)
        seconds = time.perf_counter() - t0
        if device == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20, seconds
        return _rss_mib("VmHWM"), seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=int(os.environ["OMP_NUM_THREADS"]),
                    help="torch CPU threads (default 1: 2 threads on 2 cores were unstable, STACK-NOTES)")
    ap.add_argument("--out", default="bench/results", help="where plots go")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}", flush=True)
    bench_finetune_step(args.device, 64, 3 * args.repeats)          # 0.1 s steps: more repeats, steadier median
    bench_finetune_step(args.device, 256, max(2, args.repeats // 2))
    for b in (1, 4, 16):
        bench_generate(args.device, b)
    bench_mask_subset_curves(args.out)
    bench_tracking(args.device)
    bench_evaluate_cache()
    bench_data_wait(args.device)
    for kind in ("finetune_step_256px", "generate_batch4_256px"):
        ours, baseline = (peak_memory(kind, side, args.device) for side in ("ours", "baseline"))
        row(f"peak_{'gpu_alloc' if args.device == 'cuda' else 'rss'}_{kind}", ours, baseline, None, unit=" MiB",
            note="(2 calls, above the process's memory just before them: activations, gradients, optimizer state)")
    if args.device == "cuda":
        mib, seconds = bench_sd2_memory(args.device)
        row("peak_gpu_sd2_512px_batch4", mib, 16 * 1024, 1.0, unit=" MiB",
            note=f"(SD2-base-shaped finetune, bf16 + gradient checkpointing, 3 steps + validation, {seconds:.0f} s; "
                 "baseline = the 16 GiB target)")
    else:
        print("  peak_gpu_sd2_512px_batch4: unmeasured (no GPU here; --device cuda runs the real finetune on an "
              "SD2-base-shaped model, target < 16 GiB)")
    print("\n| benchmark | ours | baseline | ratio | target | ok |\n| --- | --- | --- | --- | --- | --- |")
    for r in ROWS:
        tgt = "-" if r["target"] is None else f"<= {r['target']}"
        print(f"| {r['name']} | {r['ours']:.4g}{r['unit']} | {r['baseline']:.4g}{r['unit']} | {r['ratio']:.3f} | {tgt} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    return 0 if all(r["ok"] for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
