"""`describe`: per-image clinical descriptions from an OpenAI-compatible LLM (paper Sec. 3.4), or a template.

For every image of a dataset folder that has no description (all of them with `overwrite`):

- with `llm_url`: POST {llm_url}/chat/completions with the paper's prompt and the image as a base64
  data URL (vision message format). The answer must begin with "a dermoscopic lesion photo of
  {class} for skin cancer diagnosis" (PROMPT_TEMPLATE); otherwise it is asked again and, after
  `max_retries` retries, flagged as a failure and not stored;
- without: a deterministic template from the class and measurements of the image and its mask
  (lesion size, mean colour name, border irregularity from perimeter vs area).

Answers go to the dataset's descriptions.json as {"<id>": {"description": text, "source": s}} with
s = "llm:<model>" or "template"; other entries are kept as they are. The file is rewritten
atomically (temp file + os.replace) about once a second and when the run ends, however it ends.

Robustness: `concurrency` requests in flight; a socket `timeout`; retries with exponential backoff
(Retry-After / retry-after-ms win) on 429, 5xx, timeouts, dropped connections and invalid answers.
Every valid answer is appended (and flushed) to <cache_dir>/answers.jsonl as soon as it arrives,
keyed by sha256(image bytes) + filled prompt + model, so a crash, Ctrl-C or a re-run (even with
`overwrite`) never pays twice for an answer. On Ctrl-C the requests in flight are allowed to finish
(their answers are kept), nothing new is sent, and descriptions.json gets all answers received.

The API key is read from the environment variable named by `api_key_env`, sent only in the
Authorization header and never logged, stored or put in an error message: every text that leaves
the client (answers, server error bodies) has the key replaced by "***", and the URL is logged
without user info or credential-like query values.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import http.client
import io
import json
import logging
import os
import random
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

from harness import tracking
from harness.config import PROMPT_TEMPLATE, DescribeConfig, PrepareConfig
from harness.data.layouts import load_dataset
from harness.data.records import DataError, Sample
from harness.data.splits import dataset_digest, train_test_split
from harness.schema import TAG_DESCRIBE_MODE, TAG_DIGEST, TAG_DIGEST_AFTER, TAG_DIGEST_BEFORE

log = logging.getLogger(__name__)

DESCRIPTIONS_FILE = "descriptions.json"
CACHE_FILE = "answers.jsonl"
SOURCE_TEMPLATE = "template"
SOURCE_DATASET = "dataset"           # an entry written by someone else (no "source" field)
MAX_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 120.0
FLUSH_EVERY_S = 1.0
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_SECRET_QUERY = re.compile(r"key|token|secret|sig|auth|pass|cred", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DescribeError(ValueError):
    """Bad configuration, unusable dataset folder or endpoint; the message names the file or URL."""


class _Fatal(Exception):
    """An endpoint answer that no retry or other image will fix (bad key, wrong URL): stop the run."""


# ------------------------------------------------------------------------------------ text helpers
def required_prefix(label: str) -> str:
    return PROMPT_TEMPLATE.format(class_name=label)


def normalise_answer(text: str, label: str) -> str | None:
    """One line, without wrapping quotes, beginning exactly with the required phrase; None if the
    answer does not begin with it (compared case-insensitively)."""
    t = " ".join(str(text).split()).strip("\"'`\u201c\u201d\u2018\u2019 ")
    prefix = required_prefix(label)
    if not t.lower().startswith(prefix.lower()):
        return None
    return prefix + t[len(prefix):]


class _Scrubber:
    """Replaces the API key in any text with ***; keys shorter than 6 characters are not secrets
    worth garbling answers for (local servers often take any placeholder)."""

    def __init__(self, key: str):
        self._key = key if len(key) >= 6 else ""

    def __call__(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def redact_url(url: str, scrub=lambda s: s) -> str:
    """The URL without user info and with credential-like query values replaced by ***."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.urlencode(
        [(k, "***" if _SECRET_QUERY.search(k) else v)
         for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return scrub(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def chat_url(base: str) -> str:
    """{base}/chat/completions (a base that already ends so is taken as it is); query kept."""
    parts = urllib.parse.urlsplit(base)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


# ------------------------------------------------------------------------------------ template
# Reference colours (RGB) for naming a lesion's mean colour: the nearest one wins.
COLOUR_NAMES = {
    "black": (35, 28, 28),
    "dark brown": (85, 55, 40),
    "brown": (135, 90, 60),
    "light brown": (185, 140, 105),
    "tan": (215, 180, 150),
    "pink": (215, 140, 145),
    "red": (175, 45, 55),
    "purple": (115, 45, 85),
    "blue-grey": (100, 110, 130),
    "white": (235, 230, 225),
}


def measure_lesion(image_path: Path, mask_path: Path | None) -> dict:
    """Lesion area fraction, mean colour name, and border irregularity = perimeter / perimeter of a
    disc of the same area (1.0 = disc). Perimeter: pixel-edge count x pi/4 (isotropic estimate)."""
    rgb = np.asarray(Image.open(image_path).convert("RGB"), dtype=np.float32)
    if mask_path is None:
        inside = np.ones(rgb.shape[:2], bool)
    else:
        mask = Image.open(mask_path).convert("L")
        if mask.size != (rgb.shape[1], rgb.shape[0]):
            mask = mask.resize((rgb.shape[1], rgb.shape[0]), Image.NEAREST)
        inside = np.asarray(mask) > 127
    area = int(inside.sum())
    pixels = rgb[inside] if area else rgb.reshape(-1, 3)
    mean = pixels.mean(axis=0)
    colour = min(COLOUR_NAMES, key=lambda n: float(((np.array(COLOUR_NAMES[n]) - mean) ** 2).sum()))
    padded = np.pad(inside, 1)
    edges = int((padded[1:, :] != padded[:-1, :]).sum() + (padded[:, 1:] != padded[:, :-1]).sum())
    irregularity = (edges * np.pi / 4) / (2 * np.sqrt(np.pi * area)) if area else 0.0
    return {"area_fraction": area / inside.size, "colour": colour, "irregularity": float(irregularity),
            "has_mask": mask_path is not None and area > 0}


def template_description(label: str, image_path: Path, mask_path: Path | None) -> str:
    """Deterministic: the same image, mask and class always give the same text."""
    m = measure_lesion(image_path, mask_path)
    if not m["has_mask"]:
        return f"{required_prefix(label)}, lesion predominantly {m['colour']} in colour"
    pct, r = round(100 * m["area_fraction"]), m["irregularity"]
    size = "small" if pct < 6 else "medium-sized" if pct < 15 else "large"
    border = ("a regular well-defined border" if r < 1.05 else
              "a slightly irregular border" if r < 1.15 else "an irregular poorly defined border")
    return (f"{required_prefix(label)}, {size} lesion covering {pct}% of the field, "
            f"predominantly {m['colour']} in colour, with {border}")


# ------------------------------------------------------------------------------------ files
def _write_json_atomic(path: Path, obj) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DescriptionFiles:
    """The descriptions.json file(s) of a dataset, kept raw (entries we do not touch stay as they are).

    ISIC-GPT with train/ and test/: a part's own descriptions.json wins over the top one when read
    (harness.data.layouts), so an answer goes to the part's file if it has one, else to the top one.
    """

    def __init__(self, root: Path, layout: str):
        self.root, self.layout = Path(root), layout
        self.raw: dict[Path, dict] = {}
        self.dirty: set[Path] = set()
        self.last_flush = time.monotonic()

    def file_for(self, sample: Sample) -> Path:
        if self.layout == "isic-gpt":
            try:
                first = sample.image.relative_to(self.root).parts[0]
            except ValueError:
                first = ""
            if first in ("train", "test") and (self.root / first / DESCRIPTIONS_FILE).is_file():
                return self.root / first / DESCRIPTIONS_FILE
        return self.root / DESCRIPTIONS_FILE

    def _load(self, path: Path) -> dict:
        if path not in self.raw:
            if path.is_file():
                try:
                    raw = json.loads(path.read_text(encoding="utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DescribeError(f"{path}: not valid JSON ({e})") from e
                if not isinstance(raw, dict):
                    raise DescribeError(f"{path}: expected an object mapping image id -> description")
            else:
                raw = {}
            self.raw[path] = raw
        return self.raw[path]

    def check_writable(self, samples) -> None:
        for path in {self.file_for(s) for s in samples}:
            self._load(path)
            if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
                raise DescribeError(f"{path}: cannot write descriptions there (no write permission)")

    def set(self, sample: Sample, text: str, source: str) -> None:
        path = self.file_for(sample)
        self._load(path)[sample.id] = {"description": text, "source": source}
        self.dirty.add(path)

    def entry(self, sample: Sample) -> tuple[str, str]:
        """(description, source) as a reader of the dataset sees it now; ("", "") if none."""
        for path in dict.fromkeys((self.file_for(sample), self.root / DESCRIPTIONS_FILE)):
            value = self._load(path).get(sample.id)
            if isinstance(value, dict):
                return str(value.get("description", "")), str(value.get("source") or SOURCE_DATASET)
            if isinstance(value, str):
                return value, SOURCE_DATASET
        return "", ""

    def flush(self, force: bool = True) -> None:
        if not self.dirty or (not force and time.monotonic() - self.last_flush < FLUSH_EVERY_S):
            return
        for path in sorted(self.dirty):
            _write_json_atomic(path, self.raw[path])
        self.dirty.clear()
        self.last_flush = time.monotonic()


class AnswerCache:
    """JSON lines, one valid answer each, appended and flushed as it arrives (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.answers: dict[str, str] = {}
        self._file = None
        if self.path.is_file():
            bad = 0
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                    self.answers[rec["key"]] = rec["description"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += bool(line.strip())
            if bad:
                log.warning("%s: skipped %d unreadable line(s) (a run cut off mid-write?)", self.path, bad)

    @staticmethod
    def key(image_sha256: str, prompt: str, model: str) -> str:
        return hashlib.sha256(json.dumps([image_sha256, prompt, model]).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put(self, key: str, record: dict) -> None:
        line = json.dumps({"key": key, **record}, ensure_ascii=False) + "\n"
        with self.lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - open across appends
                self._file.seek(0, os.SEEK_END)
                if self._file.tell() > 0:           # a cut-off last line must not swallow ours
                    self._file.seek(self._file.tell() - 1)
                    if self._file.read(1) != "\n":
                        self._file.write("\n")
            self._file.write(line)
            self._file.flush()
            self.answers[key] = record["description"]

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None


# ------------------------------------------------------------------------------------ endpoint
@dataclass
class Job:
    sample: Sample
    prompt: str
    image_sha256: str
    cache_key: str


@dataclass
class Outcome:
    job: Job
    text: str | None = None       # the valid description, or None
    error: str = ""               # why not (already scrubbed)
    unreachable: bool = False     # every attempt failed to connect
    interrupted: bool = False     # stopped by Ctrl-C / a fatal error elsewhere: neither done nor failed
    requests: int = 0
    retries: int = 0
    invalid: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return min(max(float(value) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _image_data_url(path: Path) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime:
        data = path.read_bytes()
    else:                                   # BMP / TIFF: not accepted by vision endpoints -> PNG
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class ChatClient:
    """One OpenAI-compatible chat-completions endpoint; `ask` runs in worker threads."""

    def __init__(self, cfg: DescribeConfig, key: str, cache: AnswerCache, stop: threading.Event):
        self.cfg, self.cache, self.stop = cfg, cache, stop
        self.endpoint = chat_url(cfg.llm_url)
        self.scrub = _Scrubber(key)
        self.shown = redact_url(self.endpoint, self.scrub)     # what messages and params show
        self._key = key

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "skindualgen-harness/describe"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _post(self, body: bytes):
        req = urllib.request.Request(self.endpoint, data=body, headers=self._headers(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            try:
                payload = e.read()
            except (OSError, http.client.HTTPException):
                payload = b""
            return e.code, e.headers, payload

    def _excerpt(self, payload: bytes) -> str:
        text = payload.decode("utf-8", errors="replace")
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
                text = str(obj["error"].get("message", text))
        except json.JSONDecodeError:
            pass
        text = " ".join(text.split())
        return self.scrub(text[:300] + ("..." if len(text) > 300 else ""))

    def body(self, job: Job) -> bytes:
        msg = {"role": "user", "content": [
            {"type": "text", "text": job.prompt},
            {"type": "image_url", "image_url": {"url": _image_data_url(job.sample.image)}}]}
        payload = {"model": self.cfg.llm_model, "messages": [msg]}
        if self.cfg.max_tokens > 0:
            payload["max_tokens"] = self.cfg.max_tokens
        return json.dumps(payload).encode()

    def _backoff(self, attempt: int) -> float:
        return min(MAX_BACKOFF_S, self.cfg.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    def ask(self, job: Job) -> Outcome:
        out = Outcome(job)
        body = self.body(job)
        reason, delay, connect_failures = "", 0.0, 0
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                out.retries += 1
                log.info("%s: retry %d in %.1f s (%s)", job.sample.id, attempt, delay, reason)
                if self.stop.wait(delay):
                    out.error, out.interrupted = f"interrupted before retrying ({reason})", True
                    return out
            elif self.stop.is_set():
                out.error, out.interrupted = "interrupted before asking", True
                return out
            out.requests += 1
            delay = self._backoff(attempt)
            try:
                status, headers, payload = self._post(body)
            except TimeoutError:
                reason = f"no answer within {self.cfg.timeout:g} s"
                continue
            except urllib.error.URLError as e:
                if isinstance(e.reason, TimeoutError):
                    reason = f"no answer within {self.cfg.timeout:g} s"
                else:
                    reason, connect_failures = f"cannot connect ({self.scrub(str(e.reason))})", connect_failures + 1
                continue
            except (OSError, http.client.HTTPException) as e:
                reason = f"connection dropped ({self.scrub(type(e).__name__ + ': ' + str(e))})"
                continue
            if status == 200:
                text = self._read_answer(payload, out)
                if text is None:
                    reason = "unreadable response (not an OpenAI chat completion)"
                    continue
                valid = normalise_answer(self.scrub(text), job.sample.label)
                if valid is None:
                    out.invalid += 1
                    shown = self.scrub(" ".join(text.split()))[:120]
                    reason = f"answer does not begin with {required_prefix(job.sample.label)!r}: {shown!r}"
                    delay = 0.0
                    continue
                self.cache.put(job.cache_key, {
                    "image_sha256": job.image_sha256, "model": self.cfg.llm_model, "prompt": job.prompt,
                    "description": valid, "endpoint": self.shown, "image": job.sample.image.name,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
                out.text = valid
                return out
            if status in (401, 403):
                raise _Fatal(f"{self.shown}: HTTP {status} ({self._excerpt(payload)}); check the key in "
                             f"${self.cfg.api_key_env}")
            if status == 404:
                raise _Fatal(f"{self.shown}: HTTP 404 ({self._excerpt(payload)}); check --llm-url (the "
                             f"base ending in /v1) and that model {self.cfg.llm_model!r} is served there")
            reason = f"HTTP {status}: {self._excerpt(payload)}"
            if status == 429 or status >= 500:
                wait = _retry_after(headers)
                delay = delay if wait is None else wait
                continue
            out.error = reason                      # 400, 413, 422...: this image will not do
            return out
        out.error = f"gave up after {out.requests} attempt(s): {reason}"
        out.unreachable = connect_failures == out.requests
        return out

    @staticmethod
    def _read_answer(payload: bytes, out: Outcome) -> str | None:
        try:
            obj = json.loads(payload)
            content = obj["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            return None
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            out.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            out.completion_tokens += int(usage.get("completion_tokens") or 0)
        if isinstance(content, list):             # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else None


# ------------------------------------------------------------------------------------ the stage
@dataclass
class Stats:
    described_llm: int = 0
    described_cache: int = 0
    described_template: int = 0
    failures: int = 0
    invalid_answers: int = 0
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, o: Outcome) -> None:
        self.requests += o.requests
        self.retries += o.retries
        self.invalid_answers += o.invalid
        self.prompt_tokens += o.prompt_tokens
        self.completion_tokens += o.completion_tokens
        if o.text is not None:
            self.described_llm += 1
        elif not o.interrupted:
            self.failures += 1

    def postfix(self) -> str:
        return (f"llm {self.described_llm} cache {self.described_cache} fail {self.failures} "
                f"tokens {self.prompt_tokens}/{self.completion_tokens}")


def _check_config(cfg: DescribeConfig) -> None:
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
    if cfg.concurrency < 1 or cfg.max_retries < 0 or cfg.timeout <= 0 or cfg.backoff < 0:
        raise DescribeError(f"need concurrency >= 1, max_retries >= 0, timeout > 0, backoff >= 0; got "
                            f"{cfg.concurrency}, {cfg.max_retries}, {cfg.timeout}, {cfg.backoff}")
    try:
        cfg.prompt.format(class_name="melanoma")
    except (KeyError, IndexError, ValueError) as e:
        raise DescribeError(f"--prompt: only {{class_name}} may be filled in ({e!r})") from e


def _fill_template(todo: list[Sample], files: DescriptionFiles, stats: Stats, bar) -> None:
    for s in todo:
        files.set(s, template_description(s.label, s.image, s.mask), SOURCE_TEMPLATE)
        stats.described_template += 1
        bar.update(1)
        files.flush(force=False)


def _fill_llm(todo: list[Sample], files: DescriptionFiles, cfg: DescribeConfig, key: str, shas: dict,
              stats: Stats, failures: dict, bar) -> None:
    cache = AnswerCache(Path(cfg.cache_dir) / CACHE_FILE)
    stop = threading.Event()
    client = ChatClient(cfg, key, cache, stop)
    source = f"llm:{cfg.llm_model}"
    jobs = []
    for s in todo:
        prompt = cfg.prompt.format(class_name=s.label)
        job = Job(s, prompt, shas[s.id][0], AnswerCache.key(shas[s.id][0], prompt, cfg.llm_model))
        cached = cache.get(job.cache_key)
        if cached is not None:
            files.set(s, cached, source)
            stats.described_cache += 1
            bar.update(1)
        else:
            jobs.append(job)
    bar.set_postfix_str(stats.postfix())
    files.flush()
    if not jobs:
        return
    applied: set[int] = set()

    def apply(fut) -> None:
        applied.add(id(fut))
        o = fut.result()                    # re-raises _Fatal from the worker
        stats.add(o)
        if o.text is not None:
            files.set(o.job.sample, o.text, source)
        elif not o.interrupted:
            failures[o.job.sample.id] = o.error
            log.warning("%s (%s): not described: %s", o.job.sample.id, o.job.sample.image, o.error)
            if o.unreachable:
                raise DescribeError(f"{client.shown}: endpoint unreachable: {o.error}")
        bar.update(1)
        bar.set_postfix_str(stats.postfix())
        files.flush(force=False)

    pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="describe")
    futures = [pool.submit(client.ask, job) for job in jobs]
    try:
        for fut in as_completed(futures):
            apply(fut)
    except BaseException as e:
        stop.set()
        in_flight = sum(f.running() for f in futures)
        if in_flight and isinstance(e, KeyboardInterrupt):
            log.warning("interrupted: waiting for %d request(s) in flight (up to %g s) so their answers are "
                        "kept; Ctrl-C again to abandon them", in_flight, cfg.timeout)
        pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:                 # answers that arrived meanwhile still count
            if id(fut) not in applied and fut.done() and not fut.cancelled():
                try:
                    apply(fut)
                except BaseException as later:   # noqa: BLE001 - the first error is the one reported
                    log.debug("%s: %s (after an earlier error)", fut, later)
        if isinstance(e, _Fatal):
            raise DescribeError(str(e)) from None
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)   # all done here, unless Ctrl-C came twice
        cache.close()


def _log_results(files: DescriptionFiles, samples: list[Sample], n_todo: int, stats: Stats,
                 failures: dict, digest_before: str, shas: dict) -> None:
    merged, by_source = {}, {"llm": 0, SOURCE_TEMPLATE: 0, SOURCE_DATASET: 0}
    for s in samples:
        text, source = files.entry(s)
        if text.strip():
            merged[s.id] = {"description": text, "source": source}
            kind = "llm" if source.startswith("llm:") else source if source in by_source else SOURCE_DATASET
            by_source[kind] += 1
    metrics = {f"source/{k}": v for k, v in by_source.items()}
    metrics.update({"n_images": len(samples), "n_to_describe": n_todo, "missing": len(samples) - len(merged),
                    "total_tokens": stats.prompt_tokens + stats.completion_tokens,
                    **{k.replace("described_", "described/"): v for k, v in dataclasses.asdict(stats).items()}})
    mlflow.log_metrics(metrics)
    mlflow.log_dict(merged, "descriptions.json")
    if failures:
        mlflow.log_dict(dict(sorted(failures.items())), "describe_failures.json")
    after = dataset_digest(train_test_split(load_dataset(files.root, files.layout), PrepareConfig.test_fraction,
                                            PrepareConfig.seed), shas)
    mlflow.set_tags({TAG_DIGEST_BEFORE: digest_before, TAG_DIGEST_AFTER: after, TAG_DIGEST: after})


_DEMO_REFUSAL = ("the embedded demo dataset (--data-dir '') is a reproducible build that later stages check "
                 "byte for byte, so describe does not change it. Describe a copy instead: "
                 "`skindualgen demo-data --output-dir data/demo-copy`, then "
                 "`skindualgen describe --data-dir data/demo-copy ...`")


def describe(cfg: DescribeConfig, experiment: str | None = None, progress: bool = True) -> str:
    """Fill missing descriptions (all with cfg.overwrite) and return the MLflow run id.

    Raises DescribeError / DataError for bad input before any request is sent; an unusable endpoint
    (bad key, wrong URL, unreachable) stops the run with DescribeError, keeping the answers so far.
    Images that could not be described are not stored; they are counted in the metric `failures`
    and listed in the artifact describe_failures.json.
    """
    from tqdm import tqdm

    from harness.data.prepare import load_prepared

    _check_config(cfg)
    if not cfg.data_dir and cfg.overwrite:
        raise DescribeError(_DEMO_REFUSAL)
    key = os.environ.get(cfg.api_key_env, "").strip() if cfg.llm_url else ""
    prepared = load_prepared(cfg.data_dir, progress=progress)
    ds = prepared.dataset
    if ds.layout not in ("isic-gpt", "ham10000"):
        raise DescribeError(f"{ds.root}: describe writes descriptions.json in an ISIC-GPT or HAM10000 folder; "
                            f"this is a {ds.layout} dataset (edit its description column instead)")
    samples = sorted(ds.samples, key=lambda s: s.id)
    todo = [s for s in samples if cfg.overwrite or not s.description.strip()]
    if todo and not cfg.data_dir:
        raise DescribeError(f"{ds.root}: {_DEMO_REFUSAL}")
    files = DescriptionFiles(ds.root, ds.layout)
    files.check_writable(todo)
    if cfg.llm_url and not key:
        log.warning("no key in $%s: sending no Authorization header (fine for a local server)", cfg.api_key_env)
    mode = "llm" if cfg.llm_url else "template"
    params = {**dataclasses.asdict(cfg), "llm_url": redact_url(cfg.llm_url, _Scrubber(key))}
    stats, failures = Stats(), {}
    with tracking.stage_run("describe", params, dataset_digest=prepared.digest, experiment=experiment,
                            extra_tags={TAG_DIGEST_BEFORE: prepared.digest, TAG_DESCRIBE_MODE: mode}) as run:
        bar = tqdm(total=len(todo), desc=f"describe ({cfg.llm_model if cfg.llm_url else 'template'})",
                   unit="img", disable=not progress)
        try:
            if mode == "template":
                _fill_template(todo, files, stats, bar)
            else:
                _fill_llm(todo, files, cfg, key, prepared.file_sha256, stats, failures, bar)
        finally:
            bar.close()
            files.flush()
            try:
                _log_results(files, samples, len(todo), stats, failures, prepared.digest, prepared.file_sha256)
            except Exception as e:           # noqa: BLE001 - never hide the error that ended the run
                log.warning("could not log the describe results to MLflow: %s", e)
        if failures:
            log.warning("%d image(s) not described (see describe_failures.json in run %s); a re-run retries "
                        "only those", len(failures), run.info.run_id)
    return run.info.run_id


__all__ = [
    "CACHE_FILE", "DESCRIPTIONS_FILE", "AnswerCache", "ChatClient", "DataError", "DescribeError",
    "DescriptionFiles", "chat_url", "describe", "measure_lesion", "normalise_answer", "redact_url",
    "required_prefix", "template_description",
]
