"""Where descriptions are kept: the dataset's descriptions.json and the cache of LLM answers.

descriptions.json is written to a temp file beside it, fsynced and put in place with os.replace, so
a reader, a crash or Ctrl-C only ever sees a whole file. Every valid LLM answer is appended (one JSON
line, flushed) to <cache_dir>/answers.jsonl the moment it arrives, keyed by sha256(image) + prompt +
model: nothing already answered is lost, and a re-run (even with `overwrite`) never pays for it twice.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from harness.files import user_file_mode
from harness.data.records import Sample
from harness.describe.errors import DescribeError

log = logging.getLogger(__name__)

DESCRIPTIONS_FILE = "descriptions.json"
CACHE_FILE = "answers.jsonl"
SOURCE_DATASET = "dataset"           # an entry written by someone else (no "source" field)


def write_json_atomic(path: Path, obj) -> None:
    """obj as JSON in a temp file beside path, then os.replace'd over path (path's mode kept)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else user_file_mode()
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

    def file_for(self, sample: Sample) -> Path:
        if self.layout == "isic-gpt":
            parts = sample.image.relative_to(self.root).parts if sample.image.is_relative_to(self.root) else ()
            part = parts[0] if parts else ""
            if part in ("train", "test") and (self.root / part / DESCRIPTIONS_FILE).is_file():
                return self.root / part / DESCRIPTIONS_FILE
        return self.root / DESCRIPTIONS_FILE

    def _load(self, path: Path) -> dict:
        """The raw object of a descriptions.json ({} if there is none), read once."""
        if path not in self.raw:
            try:
                raw = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DescribeError(f"{path}: not valid JSON ({e})") from e
            if not isinstance(raw, dict):
                raise DescribeError(f"{path}: expected an object mapping image id -> description")
            self.raw[path] = raw
        return self.raw[path]

    def check_writable(self, samples: list[Sample]) -> None:
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

    def flush(self) -> None:
        """Write the files changed since the last flush."""
        for path in sorted(self.dirty):
            write_json_atomic(path, self.raw[path])
        self.dirty.clear()


def cache_key(image_sha256: str, prompt: str, model: str) -> str:
    return hashlib.sha256(json.dumps([image_sha256, prompt, model]).encode()).hexdigest()


class AnswerCache:
    """answers.jsonl: one JSON line per valid answer; `put` is thread-safe and the line is on disk
    (written and the file closed) when it returns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.answers = self._read()

    def _read(self) -> dict[str, str]:
        """key -> description. A line cut off mid-write (a crash) is skipped, and ended with a newline
        so that the next answer starts a line of its own."""
        if not self.path.is_file():
            return {}
        text = self.path.read_text(encoding="utf-8", errors="replace")
        answers, bad = {}, 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
                answers[record["key"]] = record["description"]
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += bool(line.strip())
        if bad:
            log.warning("%s: skipped %d unreadable line(s) (a run cut off mid-write?)", self.path, bad)
        if text and not text.endswith("\n"):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("\n")
        return answers

    def get(self, key: str) -> str | None:
        return self.answers.get(key)

    def put(self, key: str, record: dict) -> None:
        line = json.dumps({"key": key, **record}, ensure_ascii=False) + "\n"
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
            self.answers[key] = record["description"]
