"""The `describe` stage (paper Sec. 3.4): a description for every image of a dataset folder that has
none (all of them with `overwrite`), from the endpoint (client.py, `concurrency` requests at once)
or the template (template.py), kept in the dataset's descriptions.json (store.py) and tracked as an
MLflow run. On Ctrl-C or a fatal endpoint error nothing new is sent, the requests in flight finish
and their answers are kept. Images not described are counted (`failures`) and listed in the
artifact describe_failures.json.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import urllib.parse
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import mlflow
from tqdm import tqdm

from harness import tracking
from harness.config import DescribeConfig, PrepareConfig
from harness.data.layouts import load_dataset
from harness.data.prepare import Prepared, load_prepared
from harness.data.records import Sample
from harness.data.splits import dataset_digest, train_test_split
from harness.describe.client import ANSWER_COUNTS, Answer, ChatClient, redact_url, scrubber
from harness.describe.errors import DescribeError
from harness.describe.store import CACHE_FILE, SOURCE_DATASET, AnswerCache, DescriptionFiles, cache_key
from harness.describe.template import template_description
from harness.schema import STAGE_DESCRIBE, TAG_DESCRIBE_MODE, TAG_DIGEST, TAG_DIGEST_AFTER, TAG_DIGEST_BEFORE

log = logging.getLogger(__name__)

SOURCE_TEMPLATE = "template"
COUNTS = ("described/llm", "described/cache", "described/template", "failures", *ANSWER_COUNTS)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEMO_REFUSAL = ("the embedded demo dataset (--data-dir '') is a reproducible build that later stages check "
                 "byte for byte, so describe does not change it. Describe a copy instead: "
                 "`skindualgen demo-data --output-dir data/demo-copy`, then "
                 "`skindualgen describe --data-dir data/demo-copy ...`")


@dataclass
class Job:
    sample: Sample
    prompt: str
    image_sha256: str
    key: str                      # in the answer cache


@dataclass
class Progress:
    """What the run has done so far: descriptions set, counts (metric name -> value), failures."""
    files: DescriptionFiles
    bar: tqdm
    counts: Counter = field(default_factory=lambda: Counter(dict.fromkeys(COUNTS, 0)))
    failures: dict[str, str] = field(default_factory=dict)

    def done(self, sample: Sample, text: str, source: str, how: str) -> None:
        self.files.set(sample, text, source)
        self.counts[f"described/{how}"] += 1
        self.bar.update(1)

    def answered(self, sample: Sample, answer: Answer, source: str) -> None:
        self.counts.update({name: getattr(answer, name) for name in ANSWER_COUNTS})
        if answer.text is not None:
            self.done(sample, answer.text, source, "llm")
        elif not answer.interrupted:
            self.counts["failures"] += 1
            self.failures[sample.id] = answer.error
            log.warning("%s (%s): not described: %s", sample.id, sample.image, answer.error)


def check_config(cfg: DescribeConfig) -> None:
    if not _ENV_NAME.match(cfg.api_key_env or ""):
        # never echo the value: it may be the key itself, pasted by mistake
        raise DescribeError("--api-key-env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                            "not the key itself")
    if cfg.llm_url:
        parts = urllib.parse.urlsplit(cfg.llm_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise DescribeError(f"--llm-url {redact_url(cfg.llm_url)!r}: expected http(s)://host[:port]/v1")
        if "@" in parts.netloc:
            raise DescribeError(f"--llm-url {redact_url(cfg.llm_url)!r}: do not put credentials in the URL; "
                                f"put the key in ${cfg.api_key_env}")
    if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.timeout <= 0:
        raise DescribeError(f"need concurrency >= 1, max_retries >= 0, timeout > 0; got "
                            f"{cfg.concurrency}, {cfg.max_retries}, {cfg.timeout}")
    try:
        cfg.prompt.format(class_name="melanoma")
    except (KeyError, IndexError, ValueError) as e:
        raise DescribeError(f"--prompt: only {{class_name}} may be filled in ({e!r})") from e


def fill_template(todo: list[Sample], progress: Progress) -> None:
    for s in todo:
        progress.done(s, template_description(s.label, s.image, s.mask), SOURCE_TEMPLATE, "template")


def ask_and_cache(client: ChatClient, cache: AnswerCache, job: Job) -> Answer:
    """Runs in a worker thread: the answer is in the cache before anyone else sees it."""
    answer = client.ask(job.prompt, job.sample.image, job.sample.label)
    if answer.text is not None:
        cache.put(job.key, {
            "image_sha256": job.image_sha256, "model": client.cfg.llm_model, "prompt": job.prompt,
            "description": answer.text, "endpoint": client.shown, "image": job.sample.image.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return answer


def ask_all(jobs: list[Job], client: ChatClient, cache: AnswerCache, progress: Progress, source: str) -> None:
    """`concurrency` requests at a time. On any exception (Ctrl-C, DescribeError from a worker) the
    queued jobs are dropped, the ones in flight finish and their answers count, then it goes on."""
    pool = ThreadPoolExecutor(max_workers=client.cfg.concurrency, thread_name_prefix="describe")
    futures: dict[Future, Job] = {pool.submit(ask_and_cache, client, cache, job): job for job in jobs}
    seen: set[Future] = set()
    try:
        for fut in as_completed(futures):
            seen.add(fut)
            progress.answered(futures[fut].sample, fut.result(), source)
    except BaseException as e:
        client.stop.set()
        if isinstance(e, KeyboardInterrupt):
            log.warning("interrupted: waiting for the requests in flight so their answers are kept; Ctrl-C "
                        "again to abandon them")
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures.keys() - seen:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                progress.answered(futures[fut].sample, fut.result(), source)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)   # all done here, unless Ctrl-C came twice


def fill_llm(todo: list[Sample], cfg: DescribeConfig, key: str, shas: dict, progress: Progress) -> None:
    """Cached answers first, then the endpoint for the rest."""
    cache = AnswerCache(Path(cfg.cache_dir) / CACHE_FILE)
    source = f"llm:{cfg.llm_model}"
    jobs = []
    for s in todo:
        prompt = cfg.prompt.format(class_name=s.label)
        job = Job(s, prompt, shas[s.id][0], cache_key(shas[s.id][0], prompt, cfg.llm_model))
        cached = cache.get(job.key)
        if cached is None:
            jobs.append(job)
        else:
            progress.done(s, cached, source, "cache")
    progress.files.flush()
    if jobs:
        ask_all(jobs, ChatClient(cfg, key, threading.Event()), cache, progress, source)


def log_results(progress: Progress, samples: list[Sample], n_todo: int, digest_before: str, shas: dict) -> None:
    files = progress.files
    merged, by_source = {}, {"llm": 0, SOURCE_TEMPLATE: 0, SOURCE_DATASET: 0}
    for s in samples:
        text, source = files.entry(s)
        if text.strip():
            merged[s.id] = {"description": text, "source": source}
            kind = "llm" if source.startswith("llm:") else source if source in by_source else SOURCE_DATASET
            by_source[kind] += 1
    metrics = {f"source/{k}": v for k, v in by_source.items()}
    metrics.update({"n_images": len(samples), "n_to_describe": n_todo, "missing": len(samples) - len(merged),
                    "total_tokens": progress.counts["prompt_tokens"] + progress.counts["completion_tokens"],
                    **progress.counts})
    mlflow.log_metrics(metrics)
    mlflow.log_dict(merged, "descriptions.json")
    if progress.failures:
        mlflow.log_dict(dict(sorted(progress.failures.items())), "describe_failures.json")
    after = dataset_digest(train_test_split(load_dataset(files.root, files.layout), PrepareConfig.test_fraction,
                                            PrepareConfig.seed), shas)
    mlflow.set_tags({TAG_DIGEST_BEFORE: digest_before, TAG_DIGEST_AFTER: after, TAG_DIGEST: after})


def samples_to_describe(cfg: DescribeConfig, progress: bool) -> tuple[Prepared, list[Sample], list[Sample]]:
    """(the prepared dataset, all its samples by id, those to describe); DescribeError / DataError for
    a folder describe must not or cannot write to."""
    if not cfg.data_dir and cfg.overwrite:
        raise DescribeError(_DEMO_REFUSAL)
    prepared = load_prepared(cfg.data_dir, progress=progress)
    ds = prepared.dataset
    if ds.layout not in ("isic-gpt", "ham10000"):
        raise DescribeError(f"{ds.root}: describe writes descriptions.json in an ISIC-GPT or HAM10000 folder; "
                            f"this is a {ds.layout} dataset (edit its description column instead)")
    samples = sorted(ds.samples, key=lambda s: s.id)
    todo = [s for s in samples if cfg.overwrite or not s.description.strip()]
    if todo and not cfg.data_dir:
        raise DescribeError(f"{ds.root}: {_DEMO_REFUSAL}")
    return prepared, samples, todo


def describe(cfg: DescribeConfig, experiment: str | None = None, progress: bool = True) -> str:
    """Fill missing descriptions (all with cfg.overwrite) and return the MLflow run id.

    Raises DescribeError / DataError for bad input before any request is sent; an unusable endpoint
    (bad key, wrong URL, unreachable) stops the run with DescribeError, keeping the answers so far.
    """
    check_config(cfg)
    prepared, samples, todo = samples_to_describe(cfg, progress)
    files = DescriptionFiles(prepared.dataset.root, prepared.dataset.layout)
    files.check_writable(todo)
    key = os.environ.get(cfg.api_key_env, "").strip() if cfg.llm_url else ""
    if cfg.llm_url and not key:
        log.warning("no key in $%s: sending a placeholder key (fine for a local server)", cfg.api_key_env)
    mode = "llm" if cfg.llm_url else "template"
    params = {**dataclasses.asdict(cfg), "llm_url": redact_url(cfg.llm_url, scrubber(key))}
    with tracking.stage_run(STAGE_DESCRIBE, params, dataset_digest=prepared.digest, experiment=experiment,
                            extra_tags={TAG_DIGEST_BEFORE: prepared.digest, TAG_DESCRIBE_MODE: mode}) as run:
        bar = tqdm(total=len(todo), desc=f"describe ({cfg.llm_model if cfg.llm_url else 'template'})",
                   unit="img", disable=not progress)
        done = Progress(files, bar)
        try:
            if mode == "template":
                fill_template(todo, done)
            else:
                fill_llm(todo, cfg, key, prepared.file_sha256, done)
        finally:
            bar.close()
            files.flush()
            try:
                log_results(done, samples, len(todo), prepared.digest, prepared.file_sha256)
            except Exception as e:           # noqa: BLE001 - never hide the error that ended the run
                log.warning("could not log the describe results to MLflow: %s", e)
        if done.failures:
            log.warning("%d image(s) not described (see describe_failures.json in run %s); a re-run retries "
                        "only those", len(done.failures), run.info.run_id)
    return run.info.run_id
