"""Benchmarks: our costly steps side by side with a baseline doing the same work, in one process.

    python -m bench.run                 # CPU, demo sizes, prints a table, exit 1 if a target is missed
    python -m bench.run --device cuda   # the GPU check at the paper's sizes -> bench/results/cuda.json
                                        # (bench/gpu.py; --smoke runs its code small on any device)
    python -m bench.run --main          # only the demo `main` from nothing, child time by stage (~8 min)
    python -m bench.run --main --baseline   # ... and again with `--launcher mlflow` for the ratio

Timed rows run ours and the baseline in pairs (each pair in a random order) and report the median of
the per-pair ratios, so the machine's drifting speed hits both alike (the ours and baseline columns
are the medians of their times); each section prints its own wall time. Rows:
  finetune_step_{64,256}px  our 4-channel step (diffusion + BCE + Dice) vs a plain diffusers-style
                            LoRA step (3-channel VAE, MSE only), batch 4, tiny SD2-shaped model
  text_encoder_cache        PromptCache lookup vs encoding the batch's prompts every step
  generate_batch{1,4,16}    DualGenPipeline (RGB + mask) vs StableDiffusionPipeline (RGB, PIL output),
                            same size, steps, guidance and batch; images/s reported
  generate_fused_lora_batch4  the same with our LoRA fused into the UNet (what `generate` does) vs the
                            stock pipeline with unfused LoRA; no target (0.82-0.89 from process to process)
  generate_fused_compiled_batch4  that fused UNet also under torch.compile (`generate --compile-unet true`)
                            vs the same baseline; the one-off compile is timed apart and printed
  mask_subset_*             the demo fine-tune (64 px, --curve-steps) with the mask loss on one sample
                            per batch (our default; the same loss in expectation) vs on the whole batch:
                            the mask loss at the end, per step and at equal loop time, and the loop
                            time; no target (evidence, not a gate); curves -> bench/results/*.png
  tracking_overhead         per-step async MLflow logging in real finetune runs: their time with the
                            logging's cost (training-thread calls + all background-thread CPU) vs
                            without it; tracking_overhead_on_vs_off: against runs with logging off
                            (runs taking turns step by step, see bench_tracking)
  system_metrics_cpu        CPU of MLflow's system-metrics monitor (every stage run has one; 2 s sampling
                            as in the demo) over an idle run, as a share of one core
  evaluate_cached_real_stats  evaluate against a real set whose statistics are cached vs the first time
  *_data_wait_*             share of an epoch spent waiting for data (classify 224 px, segment 256 px)
  peak_{rss,gpu_alloc}_*     peak memory of two finetune steps / generation calls at 256 px (ours vs the
                            same baselines) above what the process held before them, each in a fresh
                            process (imports alone hold ~2.9 GB here, so absolute peaks would hide it)
  main_demo_vs_budget       (`--main`, alone) the README's demo `main` from nothing: a fresh checkout of HEAD
                            (git worktree: no data/, outputs/ or .cache/ of earlier runs, so nothing is
                            resumed or reused) and a fresh sqlite store; the environment a user's shell has
                            (no OMP_NUM_THREADS); prints the child runs' time by stage. Its "baseline" is
                            the 8-minute budget (a number, not a measurement); `--main --baseline` measures
                            main_demo_fork_vs_mlflow_launcher instead: the same with a `mlflow run` process
                            per child (`--launcher mlflow`, what `main` did before the fork launcher)
  peak_gpu_sd2_512px_batch4 unmeasured on CPU: the GPU check (`--device cuda`, bench/gpu.py) measures
                            the SD2-base-shaped finetune at 512 px, batch 4, bf16 (target < 16 GiB)
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")       # 2 threads on 2 cores were at times ~100x slower; --threads
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.gpu import tracking_store  # noqa: E402

ROWS: list[dict] = []


def row(name, ours, baseline, target, unit="s", note="", ratio=None):
    """ratio: ours / baseline unless given (interleaved rows give the median of their per-pair ratios)."""
    if ratio is None:
        ratio = ours / baseline if baseline else float("nan")
    ok = target is None or ratio <= target
    ROWS.append(dict(name=name, ours=ours, baseline=baseline, ratio=ratio, target=target, ok=ok, unit=unit, note=note))
    print(f"  {name}: ours {ours:.4g}{unit}, baseline {baseline:.4g}{unit}, ratio {ratio:.3f}"
          f"{'' if target is None else f' (target <= {target})'} {note}", flush=True)


def interleaved(fa, fb, repeats, seed=0):
    """Median seconds of fa(i) and fb(i), i = 1..repeats, each pair run in a seeded random order, and
    the median of the per-pair ratios fa/fb. With a fixed order the position itself showed: two runs
    of the same function came out 0.94-0.99 apart in the order A B A B ..., and 1.02-1.05 apart in
    A B B A A B ... The two calls of a pair run seconds apart, so their ratio sees less of the
    machine's drift than a ratio of medians taken over the whole loop (generation, 4 pairs: 0.96-1.11
    for the same code on a noisy hour)."""
    fa(0), fb(0)                                     # warm-up
    times = ([], [])
    coin = np.random.default_rng(seed)
    for i in range(1, repeats + 1):
        for k in ((0, 1) if coin.random() < 0.5 else (1, 0)):
            t0 = time.perf_counter()
            (fa, fb)[k](i)
            times[k].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(*times)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def tiny(device):
    from harness.dualgen.tiny import build_tiny_components
    c = build_tiny_components(seed=0)
    for k in ("unet", "vae", "text_encoder"):
        c[k].to(device)
    return c


PROMPT = "a dermoscopic lesion photo of melanoma for skin cancer diagnosis"


def finetune_step_pair(device, resolution):
    """(ours, baseline, extras): one training step each, batch 4, on the same tiny base. Both train the
    same UNet object (with LoRA; each its own optimizer): two copies of one model ran up to a few % apart
    here, whatever the code, so only the VAEs (4 channels / 3 channels) are separate objects."""
    from harness.config import FinetuneConfig
    from harness.dualgen.base import PromptCache
    from harness.dualgen.lora import add_lora
    from harness.dualgen.train import training_step
    from harness.dualgen.vae4 import mask_trainable_parameters, widen_vae
    c, vae3 = tiny(device), tiny(device)["vae"]
    unet, vae, sch = c["unet"], widen_vae(c["vae"]), c["scheduler"]
    add_lora(unet)
    lora = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(lora + mask_trainable_parameters(vae), 1e-4)
    opt3 = torch.optim.AdamW(lora, 1e-4)
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
            lat = vae3.encode(batch["image"].to(device)).latent_dist.sample(generator=gen)
            lat = lat * vae3.config.scaling_factor
        noise = torch.randn(lat.shape, generator=gen).to(device)
        t = torch.randint(0, 1000, (4,), generator=gen).to(device)
        pred = unet(sch.add_noise(lat, noise, t), t, encoder_hidden_states=cache(batch["caption"])).sample
        torch.nn.functional.mse_loss(pred, noise).backward(); opt3.step(); opt3.zero_grad()   # noqa: E702

    return ours, baseline, (c, cache, batch)


def bench_finetune_step(device, resolution, repeats):
    ours, baseline, (c, cache, batch) = finetune_step_pair(device, resolution)
    ours_t, base_t, ratio = interleaved(ours, baseline, repeats)
    row(f"finetune_step_{resolution}px", ours_t, base_t, 1.5, ratio=ratio)
    if resolution == 64:
        from harness.dualgen.base import encode_prompts
        enc = lambda i: encode_prompts(c["tokenizer"], c["text_encoder"], batch["caption"])   # noqa: E731
        look = lambda i: cache(batch["caption"])                                                # noqa: E731
        a, b, ratio = interleaved(look, enc, 20)
        row("text_encoder_cache", a, b, 1.0, ratio=ratio,
            note="(cached lookup vs encoding each step; SD2's encoder is ~350M params)")


def generate_pair(device, batch, steps=20, resolution=64, fuse=False, compiled=False):
    """(ours, baseline): one generation call each, same prompts, seeds, steps, guidance and size, the
    same UNet and text encoder objects (see finetune_step_pair); the VAEs are 4- and 3-channel.
    fuse: ours gets the UNet with its LoRA fused as `generate` loads it (DualGenPipeline.fuse_lora,
    which cannot be undone, so on a copy of the UNet, made and fused before the timing; its seconds
    are returned) and the baseline keeps the stock unfused LoRA. compiled: also torch.compile that UNet
    (compile_unet, `generate --compile-unet true`); the compilation happens in ours' first call."""
    from diffusers import StableDiffusionPipeline
    from harness.dualgen.lora import add_lora
    from harness.dualgen.pipeline import DualGenPipeline
    from harness.dualgen.vae4 import widen_vae
    c, vae3 = tiny(device), tiny(device)["vae"]
    add_lora(c["unet"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                # a trained LoRA is not zero: B = 0 at init would fuse to nothing
        for name, p in c["unet"].named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    ours_unet = copy.deepcopy(c["unet"]) if fuse or compiled else c["unet"]
    ours_pipe = DualGenPipeline(ours_unet, widen_vae(c["vae"]), c["text_encoder"], c["tokenizer"], c["scheduler"])
    t0 = time.perf_counter()
    if fuse or compiled:
        ours_pipe.fuse_lora()
    fuse_s = time.perf_counter() - t0
    if compiled:
        ours_pipe.compile_unet()
    sd = StableDiffusionPipeline(vae=vae3, text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                 unet=c["unet"], scheduler=ours_pipe.scheduler.__class__.from_config(c["scheduler"].config),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    prompts = [PROMPT] * batch

    def ours(i):
        ours_pipe(prompts, seeds=list(range(i, i + batch)), num_inference_steps=steps, guidance_scale=1.22,
                  height=resolution, width=resolution, batch_size=batch, progress=False)

    def baseline(i):
        sd(prompts, num_inference_steps=steps, guidance_scale=1.22, height=resolution, width=resolution,
           generator=[torch.Generator().manual_seed(i + k) for k in range(batch)], output_type="pil")

    return ours, baseline, fuse_s


def bench_generate_fused(device, batch=4, steps=20, resolution=64):
    """Two rows against the stock pipeline with unfused LoRA: fused (what `generate` does by default;
    no target: it read 0.82-0.89x from process to process here, the LoRA's share of the UNet's work)
    and fused + compiled (`--compile-unet true`; target 0.85, its one-off compile printed)."""
    ours, baseline, fuse_s = generate_pair(device, batch, steps, resolution, fuse=True)
    a, b, ratio = interleaved(ours, baseline, 20)
    row(f"generate_fused_lora_batch{batch}", a, b, None, ratio=ratio,
        note=f"(LoRA merged, peft's wrappers out, q/k/v joined, vs the stock pipeline with unfused LoRA; "
             f"{batch / a:.1f} vs {batch / b:.1f} images/s; fusing once {fuse_s * 1000:.0f} ms)")
    ours, baseline, _ = generate_pair(device, batch, steps, resolution, compiled=True)
    t0 = time.perf_counter()
    ours(0)                                          # compiles the UNet
    compile_s = time.perf_counter() - t0
    a, b, ratio = interleaved(ours, baseline, 20)
    row(f"generate_fused_compiled_batch{batch}", a, b, 0.85, ratio=ratio,
        note=f"(the fused UNet under torch.compile, vs the stock pipeline with unfused LoRA; "
             f"{batch / a:.1f} vs {batch / b:.1f} images/s; compiling once {compile_s:.0f} s)")


def bench_generate(device, batch, steps=20, resolution=64):
    ours, baseline, _ = generate_pair(device, batch, steps, resolution)
    a, b, ratio = interleaved(ours, baseline, {1: 20, 4: 12}.get(batch, 5))
    row(f"generate_batch{batch}", a, b, 1.05, ratio=ratio, note=f"({batch / a:.1f} images/s ours, {batch / b:.1f} baseline)")


class TakeTurns:
    """Threads that run one training step at a time, in turn (A B A B ...). The machine's speed here
    drifts by +-15 % within seconds, so two runs timed one after the other differed by +-10 %; taking
    turns every step makes the drift hit both alike. Each thread's time is the sum of its turns (from
    the start of one of its steps to the start of its next, so data loading and logging are in it);
    the first step waits until every thread has arrived, the last one is not timed. Also measured:
    the CPU time the whole process spent while the turns ran, so that work done meanwhile by other
    threads (MLflow's asynchronous logging) can be counted too."""

    def __init__(self, names, on_close=None, timeout=900):
        self.names, self.turn, self.timeout, self.on_close = list(names), 0, timeout, on_close
        self.cond = threading.Condition()
        self.arrived, self.finished = set(), set()
        self.wall, self.cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        self.turns = {name: [] for name in names}        # seconds of each turn
        self.t0 = self.c0 = self.process_cpu0 = None
        self.window_cpu = 0.0
        self.aborted = False

    def abort(self) -> None:
        """A thread failed: the others go on without taking turns (their times are then meaningless)."""
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def _wait(self, ready):
        if not self.cond.wait_for(lambda: self.aborted or ready(), self.timeout):
            raise TimeoutError("TakeTurns: the other thread never took its turn (did it fail?)")

    def _pass_turn(self):
        for _ in self.names:
            self.turn = (self.turn + 1) % len(self.names)
            if self.names[self.turn] not in self.finished:
                break
        self.cond.notify_all()

    def step(self, name: str, last: bool) -> None:
        with self.cond:
            if self.aborted:
                return
            if self.t0 is not None and self.names[self.turn] == name:       # this thread's turn ends
                self.turns[name].append(time.perf_counter() - self.t0)
                self.wall[name] += self.turns[name][-1]
                self.cpu[name] += time.thread_time() - self.c0
                self.t0 = None
                self._pass_turn()
            if name not in self.arrived:
                self.arrived.add(name)
                if len(self.arrived) == len(self.names):
                    self.process_cpu0 = _process_cpu()
                self.cond.notify_all()
                self._wait(lambda: len(self.arrived) == len(self.names))
            if last:
                self.finished.add(name)
                if len(self.finished) == len(self.names):
                    if self.on_close is not None:
                        self.on_close()              # e.g. let background threads finish what the turns queued
                    self.window_cpu = _process_cpu() - self.process_cpu0
                if self.names[self.turn] == name:
                    self._pass_turn()
                self.cond.notify_all()
                self._wait(lambda: len(self.finished) == len(self.names))
                return
            self._wait(lambda: self.names[self.turn] == name)
            self.t0, self.c0 = time.perf_counter(), time.thread_time()


def _process_cpu() -> float:
    """User + system CPU seconds of every thread of this process, those that ended included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def finetunes_taking_turns(configs: dict, turns: TakeTurns | None = None) -> TakeTurns:
    """Run `finetune(cfg)` for each {thread name: cfg} in its own thread, one training step at a time
    in turn (the dict's order). Returns the TakeTurns with each run's time in its turns."""
    from harness.dualgen import train as T
    turns, errors = turns or TakeTurns(list(configs)), {}
    original = T.training_step

    def step_in_turn(batch, unet, vae, scheduler, cache, cfg, step, dev, rank=0):
        turns.step(threading.current_thread().name, last=step == cfg.max_train_steps - 1)
        return original(batch, unet, vae, scheduler, cache, cfg, step, dev, rank=rank)

    def run(name):
        try:
            T.finetune(configs[name], experiment="bench", progress=False)
        except BaseException as e:               # noqa: B036 (re-raised in the main thread)
            errors[name] = e
            turns.abort()

    T.training_step = step_in_turn
    try:
        threads = [threading.Thread(target=run, name=name, args=(name,)) for name in configs]
        for t in threads:                # one set-up at a time: model loading is not thread-safe
            t.start()
            with turns.cond:
                turns._wait(lambda t=t: t.name in turns.arrived)
        for t in threads:
            t.join()
    finally:
        T.training_step = original
    if errors:
        raise next(iter(errors.values()))
    return turns


def bench_tracking(device, steps=51):
    """Per-step MLflow logging (async, log_every=1) in a real `finetune`, against logging off.

    Two runs, logging on and off, in two threads of one process taking turns every step
    (`finetunes_taking_turns`); twice, the order swapped. Their times are an evidence row
    (`tracking_overhead_on_vs_off`), but their difference cannot resolve a 1 % effect here: a step's
    duration varies by ~15 % from one turn to the next (two identical runs taking turns differed by up
    to 3.4 % over 60 steps). The gated row measures the cost itself, in the logging runs: ours = their
    time in their turns + all CPU time other threads (MLflow's asynchronous logging) spent while the
    turns ran, the queue drained at the end (counted as if it were on the training thread's path: an
    upper bound); baseline = the same time minus what the training thread spent inside the logging
    calls (MetricBuffer.add/flush), i.e. those runs with their logging taken out.
    MetricBuffer's 10-second flush is off here: taking turns doubles each run's wall time, which would
    double its flushes; it flushes every 50 steps, as a real run does at these step times. With 50k + 1
    steps, every step's metrics but the last one's are sent and written while the turns run."""
    import mlflow

    from harness import tracking
    from harness.config import FinetuneConfig
    from harness.data.demo import make_demo_dataset
    from harness.dualgen import train as T
    from harness.dualgen.tiny import build_tiny_components, save_components
    inside, active = [0.0], {}

    def timed(method):
        def wrapper(buffer, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(buffer, *args, **kwargs)
            finally:
                turns = active["turns"]
                if len(turns.finished) < len(turns.names):          # a call made during a turn
                    inside[0] += time.perf_counter() - t0
        return wrapper

    def init(buffer, run_id, every=50, seconds=10.0, hint=""):
        original_init(buffer, run_id, every, float("inf"), hint)

    with tempfile.TemporaryDirectory() as tmp, tracking_store(tmp):
        base = save_components(build_tiny_components(0), f"{tmp}/base")
        data = make_demo_dataset(f"{tmp}/demo", seed=0, per_class=4, min_size=32, max_size=48)
        tracking.setup("bench")                   # the experiment exists before two threads look for it
        on = off = background = 0.0
        original_init, add, flush = T.MetricBuffer.__init__, T.MetricBuffer.add, T.MetricBuffer.flush
        T.MetricBuffer.__init__, T.MetricBuffer.add, T.MetricBuffer.flush = init, timed(add), timed(flush)
        try:
            for order in (("on", "off"), ("off", "on")):
                active["turns"] = TakeTurns(list(order), on_close=mlflow.flush_async_logging)
                turns = finetunes_taking_turns({name: FinetuneConfig(
                    data_dir=str(data), base_model=str(base), resolution=32, max_train_steps=steps,
                    validation_epochs=0, checkpointing_steps=0, log_every=int(name == "on"),
                    output_dir=f"{tmp}/{name}-{order[0]}", test_fraction=0.25) for name in order}, active["turns"])
                on, off = on + turns.wall["on"], off + turns.wall["off"]
                background += max(0.0, turns.window_cpu - sum(turns.cpu.values()))
                print(f"    {' then '.join(order)}: on {turns.wall['on']:.2f} s, off {turns.wall['off']:.2f} s")
        finally:
            T.MetricBuffer.__init__, T.MetricBuffer.add, T.MetricBuffer.flush = original_init, add, flush
        row("tracking_overhead", on + background, on - inside[0], 1.03,
            note=f"(logging runs: {on:.2f} s in their turns, of which {inside[0]:.3f} s in the logging calls, "
                 f"+ {background:.3f} s CPU of other threads; 2 runs of {steps} steps)")
        row("tracking_overhead_on_vs_off", on, off, None,
            note="(the same logging runs against the runs with logging off, taking turns; noise +-3 %)")


def bench_system_metrics(seconds: float = 20.0, interval: float = 2.0):
    """The CPU MLflow's system-metrics monitor costs a run: the process's CPU over `seconds` of an idle
    run with the monitor sampling every `interval` s (the demo's 2 s; the default is 10 s), minus the
    same without it, after a first run that sets the store up and a first monitored one (printed: the
    monitor's start costs little). Ratio = 1 + that CPU / the run's time: the share of one core it takes."""
    import mlflow
    used = {}
    with tempfile.TemporaryDirectory() as tmp, tracking_store(tmp):
        mlflow.set_system_metrics_sampling_interval(interval)
        mlflow.set_system_metrics_samples_before_logging(1)
        for name, on, length in (("store", False, 0.1), ("first", True, 2 * interval), ("on", True, seconds),
                                 ("off", False, seconds)):      # "store": the sqlite store's own first-run set-up
            cpu = _process_cpu()
            with mlflow.start_run(log_system_metrics=on):
                time.sleep(length)
            used[name] = _process_cpu() - cpu
    extra = max(0.0, used["on"] - used["off"])
    row("system_metrics_cpu", seconds + extra, seconds, 1.03, ratio=1 + extra / seconds,
        note=f"({used['on']:.3f} s CPU with the monitor at {interval:g} s sampling vs {used['off']:.3f} s without, "
             f"over {seconds:g} s of a run: {100 * extra / seconds:.2f} % of a core, /5 at the default 10 s; "
             f"a process's first monitored run: {used['first']:.3f} s over {2 * interval:g} s)")


def bench_mask_subset_curves(out_dir, steps=200):
    """Training curves of the demo fine-tune with `mask_loss_samples` = 1 (default) and 0 (whole batch),
    same seed and data, the two runs side by side in two processes (one core each). Each logged
    BCE/Dice of the subset is an unbiased estimate of that step's whole-batch value, but its gradient
    is noisier: per step the mask loss falls more slowly, per second of training it falls as fast or
    faster. Both views are printed and plotted."""
    from pathlib import Path

    from harness.data.demo import make_demo_dataset
    with tempfile.TemporaryDirectory() as tmp:
        data = make_demo_dataset(f"{tmp}/demo", seed=0)
        results = dict(zip((1, 0), forked(_curves_run, [(k, str(data), tmp, steps) for k in (1, 0)])))
    curves = {k: {m: np.array(v) for m, v in r["curves"].items()} for k, r in results.items()}
    seconds = {k: r["seconds"] for k, r in results.items()}
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
    row("mask_subset_finetune_time", seconds[1], seconds[0], None,
        note=f"(loop time of the same {steps} steps, the two runs at once on one core each)")
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


def _curves_run(k, data, tmp, steps) -> dict:
    """One demo fine-tune of `bench_mask_subset_curves` (its own MLflow store): its curves, loop time."""
    from pathlib import Path

    import mlflow

    from harness.config import FinetuneConfig
    from harness.dualgen.train import finetune
    from harness.schema import METRIC_TRAIN_SECONDS
    torch.set_num_threads(1)
    cfg = FinetuneConfig(data_dir=data, base_model="tiny", resolution=64, max_train_steps=steps, validation_epochs=0,
                         checkpointing_steps=0, mask_loss_samples=k, output_dir=f"{tmp}/o{k}")
    store = Path(tmp) / f"store{k}"             # the two runs of the pair run at once: one store each
    store.mkdir(exist_ok=True)
    with tracking_store(str(store)):
        run_id = finetune(cfg, experiment="bench", progress=False)
        client = mlflow.tracking.MlflowClient()
        curves = {m: [x.value for x in sorted(client.get_metric_history(run_id, f"train/{m}"), key=lambda x: x.step)]
                  for m in ("loss_diffusion", "loss_bce", "loss_dice")}
        return {"curves": curves, "seconds": mlflow.get_run(run_id).data.metrics[METRIC_TRAIN_SECONDS]}


def bench_evaluate_cache():
    """`evaluate` of a fresh (uncached) fake set against a real set whose statistics are cached vs the
    first evaluation against it (which also extracts the real train split)."""
    import mlflow  # noqa: F401
    from harness.config import EvaluateConfig
    from harness.data.demo import make_demo_dataset
    from harness.quality import evaluate
    from harness import tracking
    with tempfile.TemporaryDirectory() as tmp, tracking_store(tmp):
        tracking.setup("bench")                   # creating the store's tables (seconds) is not evaluation either
        real = make_demo_dataset(f"{tmp}/real", seed=0)
        fakes = [make_demo_dataset(f"{tmp}/fake{i}", seed=i + 1, per_class=4) for i in range(2)]
        times = []
        for fake in fakes:
            # judges off: this row is the feature-statistics cache
            cfg = EvaluateConfig(real=str(real), fake=str(fake), lpips_pairs=100, cache_dir=f"{tmp}/cache",
                                 judges="none")
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
        samples = train.samples[:16]             # 2 steps of 8 (classify), 2 of 4 (segment)
        labels = np.array([train.classes.index(s.label) for s in samples])
        images = C.decode_images(samples, 224, progress=False)
        model = runtime.prepare_model(C.build_model("resnet34", len(train.classes), 224), dev)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        scaler = runtime.grad_scaler(dev, None)
        cls_loader = runtime.loader(C.ImageSet(images, labels, augment=True), 8, True, 0, 0, dev, train=True)
        C.train_one_epoch(model, cls_loader, opt, scaler, dev, None)              # warm-up
        t0 = time.perf_counter()
        _, step = C.train_one_epoch(model, cls_loader, opt, scaler, dev, None)
        total = time.perf_counter() - t0
        compute = step * len(cls_loader)
        row("classify_data_wait_224px", total - compute, total, 0.20, unit="s",
            note="(ours = epoch time not in steps, baseline = epoch time: ratio = waiting share)")
        seg = runtime.prepare_model(smp.Unet("resnet34", encoder_weights=None, classes=1), dev)
        opt = torch.optim.Adam(seg.parameters(), 1e-3)
        ds = PairDataset(samples[:8], 256, paired_augmentation(), image_norm="imagenet", seed=0)
        seg_loader = runtime.loader(ds, 4, True, 0, 0, dev, train=True)
        loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
        S.train_one_epoch(seg, seg_loader, loss, opt, scaler, dev, None)           # warm-up fills the cache
        t0 = time.perf_counter()
        _, step = S.train_one_epoch(seg, seg_loader, loss, opt, scaler, dev, None)
        total = time.perf_counter() - t0
        row("segment_data_wait_256px", total - step * len(seg_loader), total, 0.20, unit="s",
            note="(after the first epoch filled the decode cache)")


def forked(fn, jobs: list[tuple], processes: int = 2, clean: bool = False) -> list:
    """fn(*job) for each job, each in its own process, `processes` at a time; the results in the jobs'
    order. The process is forked from this one (imports done, so a job starts at once), or with
    `clean` from a fork server that has only imported the modules: this process's heap, full of
    blocks freed by earlier benchmarks, would otherwise serve the job's allocations without raising
    its resident memory (peaks then read 15x too low)."""
    if clean:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bench.run", "harness.dualgen.train", "harness.dualgen.pipeline"])
    else:
        ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes, maxtasksperchild=1) as pool:
        return pool.starmap(fn, jobs, chunksize=1)


def bench_peak_memory(device):
    """Peak memory of each side's work above what its process held just before it (model weights,
    imports): on CPU the kernel's VmHWM of a fresh process (reset first; see `forked`), on CUDA the allocator's
    peak allocated bytes (exact in this process). MiB."""
    kinds = ("finetune_step_256px", "generate_batch4_256px")
    jobs = [(kind, side, device) for kind in kinds for side in ("ours", "baseline")]
    from bench import run as this                 # by module name: the fork server has no __main__ of ours
    peaks = [_memory_work(*job) for job in jobs] if device == "cuda" else forked(this._memory_work, jobs, clean=True)
    mib = {job[:2]: peak for job, peak in zip(jobs, peaks)}
    for kind in kinds:
        row(f"peak_{'gpu_alloc' if device == 'cuda' else 'rss'}_{kind}", mib[kind, "ours"], mib[kind, "baseline"],
            None, unit=" MiB",
            note="(2 calls, above the process's memory just before them: activations, gradients, optimizer state)")


def _rss_mib(field):
    import re
    return int(re.search(rf"{field}:\s+(\d+) kB", open("/proc/self/status").read()).group(1)) / 1024


def _memory_work(kind, side, device) -> float:
    torch.set_num_threads(1)
    ours, baseline = (finetune_step_pair(device, 256)[:2] if kind == "finetune_step_256px" else
                      generate_pair(device, 4, steps=5, resolution=256)[:2])
    work = ours if side == "ours" else baseline
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        work(0), work(1)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    # A fixed mmap threshold: every large tensor is mapped and unmapped at once, so VmHWM is the peak of
    # live memory (glibc's adaptive threshold otherwise keeps freed blocks; peaks then varied +-40 %).
    ctypes.CDLL("libc.so.6").mallopt(-3, 65536)        # M_MMAP_THRESHOLD
    with open("/proc/self/clear_refs", "w") as f:       # resets VmHWM to the current RSS
        f.write("5")
    before = _rss_mib("VmRSS")
    work(0), work(1)
    return _rss_mib("VmHWM") - before


def demo_main(launcher: str = "auto", max_parallel: int = 2) -> tuple[float, dict[str, list[float]]]:
    """Wall time of `skindualgen main` (demo defaults) in a fresh worktree of HEAD with a fresh store, and
    the seconds of its child runs by stage (start to end of each run, from the store)."""
    import mlflow
    with tempfile.TemporaryDirectory() as tmp:
        tree = f"{tmp}/tree"
        subprocess.run(["git", "worktree", "add", "--detach", tree, "HEAD"], check=True, capture_output=True)
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MLFLOW_RUN_ID")}
        uri = f"sqlite:///{tmp}/m.db"
        env |= {"PYTHONPATH": tree, "MLFLOW_TRACKING_URI": uri}
        try:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "entrypoints.cli", "main", "--max-parallel", str(max_parallel),
                            "--launcher", launcher, "--experiment", "bench-main"],
                           cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            from harness.schema import STAGE_MAIN, TAG_MLFLOW_PARENT_RUN, TAG_STAGE
            client = mlflow.MlflowClient(uri)
            exp = client.get_experiment_by_name("bench-main")
            runs = client.search_runs([exp.experiment_id], max_results=1000)
            [parent] = [r.info.run_id for r in runs if r.data.tags.get(TAG_STAGE) == STAGE_MAIN]
            stages: dict[str, list[float]] = {}
            for r in runs:
                if r.data.tags.get(TAG_MLFLOW_PARENT_RUN) == parent and r.info.end_time:
                    stages.setdefault(r.data.tags.get(TAG_STAGE, "?"), []).append(
                        (r.info.end_time - r.info.start_time) / 1000)
            return wall, stages
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], check=False, capture_output=True)


MAIN_BUDGET_MIN = 8.0       # the demo `main` on 2 CPU cores, from nothing (README "Demo budget")


def print_stages(stages: dict[str, list[float]]) -> None:
    print("    child time by stage: stage, runs, total s, longest s", flush=True)
    for stage, secs in sorted(stages.items(), key=lambda kv: -sum(kv[1])):
        print(f"      {stage:10s} {len(secs):3d} {sum(secs):8.1f} {max(secs):7.1f}", flush=True)
    print(f"      {'all':10s} {sum(map(len, stages.values())):3d} {sum(map(sum, stages.values())):8.1f}", flush=True)


def bench_main(baseline: bool):
    """The demo `main` from nothing with the default (fork) launcher, its child time by stage; with
    `baseline`, also with `--launcher mlflow` (a `mlflow run` process per child) for the ratio."""
    wall, stages = demo_main()
    print(f"  main (fork launcher): {wall:.0f} s", flush=True)
    print_stages(stages)
    if not baseline:
        row("main_demo_vs_budget", wall / 60, MAIN_BUDGET_MIN, 1.0, unit=" min",
            note="(the demo `main` from nothing vs its budget, a fixed number: not a measurement)")
        return
    stock, stock_stages = demo_main("mlflow")
    print(f"  main (mlflow launcher): {stock:.0f} s", flush=True)
    print_stages(stock_stages)
    row("main_demo_fork_vs_mlflow_launcher", wall / 60, stock / 60, 1.0, unit=" min",
        note="(the demo `main` from nothing, children forked vs `mlflow run` each)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=int(os.environ["OMP_NUM_THREADS"]),
                    help="torch CPU threads (default 1: 2 threads on 2 cores were at times ~100x slower per op)")
    ap.add_argument("--out", default="bench/results", help="where plots go")
    ap.add_argument("--curve-steps", type=int, default=200,
                    help="steps of each demo fine-tune for the mask-loss curves (the demo profile trains 300)")
    ap.add_argument("--json", default="", help="--device cuda: where the JSON goes (default bench/results/cuda.json)")
    ap.add_argument("--main", action="store_true",
                    help="only time the demo `main` from nothing, with its child time by stage (~8 min on 2 cores)")
    ap.add_argument("--baseline", action="store_true",
                    help="with --main: also the demo `main` with `--launcher mlflow`, for the ratio (~20 min more)")
    ap.add_argument("--smoke", action="store_true",
                    help="run the GPU check's code with the tiny model at small sizes (any device)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.device == "cuda" or args.smoke:
        from bench.gpu import run_checks
        out = args.json or f"{args.out}/{'smoke' if args.smoke else 'cuda'}.json"
        result = run_checks(args.device, out, smoke=args.smoke)
        print(f"wrote {out}")
        return 0 if all("error" not in v for v in result.values() if isinstance(v, dict)) and \
            result.get("sd2_finetune", {}).get("ok", False) else 1
    t0 = time.perf_counter()
    print(f"device {args.device}, torch threads {torch.get_num_threads()}", flush=True)
    sections = [
        ("finetune step 64 px", lambda: bench_finetune_step(args.device, 64, 5 * args.repeats)),   # 0.2 s steps
        ("finetune step 256 px", lambda: bench_finetune_step(args.device, 256, max(2, args.repeats // 3))),
        ("generation", lambda: [bench_generate(args.device, b) for b in (1, 4, 16)] + [bench_generate_fused(args.device)]),
        ("mask-loss curves", lambda: bench_mask_subset_curves(args.out, args.curve_steps)),
        ("tracking", lambda: bench_tracking(args.device)),
        ("system metrics", bench_system_metrics),
        ("evaluation", bench_evaluate_cache),
        ("data wait", lambda: bench_data_wait(args.device)),
        ("peak memory", lambda: bench_peak_memory(args.device)),
    ]
    if args.main:                        # a measurement of its own
        sections = [("demo main", lambda: bench_main(args.baseline))]
    for name, run in sections:
        start = time.perf_counter()
        print(f"[{name}]", flush=True)
        run()
        print(f"    ({time.perf_counter() - start:.0f} s)", flush=True)
    ROWS.append(dict(name="peak_gpu_sd2_512px_batch4", unmeasured=True, target=1.0, ok=True,
                     note="a GPU check: --device cuda runs the real finetune on an SD2-base-shaped model (bench/gpu.py)"))
    print("\n| benchmark | ours | baseline | ratio | target | ok |\n| --- | --- | --- | --- | --- | --- |")
    for r in ROWS:
        tgt = "-" if r["target"] is None else f"<= {r['target']}"
        if r.get("unmeasured"):
            print(f"| {r['name']} | unmeasured | | | {tgt} | ({r['note']}) |")
            continue
        print(f"| {r['name']} | {r['ours']:.4g}{r['unit']} | {r['baseline']:.4g}{r['unit']} | {r['ratio']:.3f} | {tgt} | "
              f"{'yes' if r['ok'] else 'NO'} |")
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
    return 0 if all(r["ok"] for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
