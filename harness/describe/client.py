"""The LLM endpoint, reached through the official `openai` client.

openai.OpenAI does the HTTP: any OpenAI-compatible base URL, the timeout, and up to `max_retries`
retries with backoff on 408/409/429/5xx, timeouts and dropped connections (Retry-After honoured).
Ours: the paper's vision message, asking again when an answer does not begin with the required
phrase, telling "stop the run" (DescribeError) from "this image failed", and the key's secrecy: it
travels only in the Authorization header, and since a server may echo it back, every text taken
from a response is scrubbed before it is logged, raised, cached or written to MLflow.
"""
from __future__ import annotations

import base64
import io
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai
from PIL import Image

from harness.config import DescribeConfig
from harness.describe.errors import DescribeError
from harness.describe.template import normalise_answer, required_prefix

NO_KEY = "EMPTY"          # sent when the key variable is empty: local OpenAI-compatible servers take any key
RETRY_COUNT_HEADER = "x-stainless-retry-count"   # openai.OpenAI numbers the retries of a request in it
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
_SECRET_QUERY = re.compile(r"key|token|secret|sig|auth|pass|cred", re.IGNORECASE)


def scrubber(key: str) -> Callable[[str], str]:
    """A function replacing the key with *** in any text; keys under 6 characters are not secrets
    worth garbling answers for (local servers often take any placeholder)."""
    return (lambda text: text.replace(key, "***")) if len(key) >= 6 else (lambda text: text)


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


def split_base_url(url: str) -> tuple[str, dict[str, str]]:
    """(base URL, its query): openai.OpenAI appends /chat/completions to the base's path and takes a
    query (e.g. api-version) as default_query. A URL ending in /chat/completions is cut to its base."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    return base, dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))


def image_data_url(path: Path) -> str:
    """The image as a base64 data URL; BMP / TIFF (not accepted by vision endpoints) as PNG."""
    mime = _MIME.get(path.suffix.lower())
    if mime:
        data = path.read_bytes()
    else:
        buf = io.BytesIO()
        Image.open(path).convert("RGB").save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


ANSWER_COUNTS = ("requests", "retries", "invalid_answers", "prompt_tokens", "completion_tokens")


@dataclass
class Answer:
    text: str | None = None       # the valid description, or None
    error: str = ""               # why not (scrubbed); "" when interrupted
    interrupted: bool = False     # stopped before asking (Ctrl-C / a fatal error elsewhere)
    requests: int = 0             # ANSWER_COUNTS: the same names as the stage's metrics
    retries: int = 0
    invalid_answers: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _count_requests(out: Answer, retries_taken: int) -> None:
    out.requests += 1 + retries_taken
    out.retries += retries_taken


class ChatClient:
    """Asks one endpoint for descriptions. `ask` runs in worker threads (one openai.OpenAI serves
    them all); once `stop` is set it sends nothing new."""

    def __init__(self, cfg: DescribeConfig, key: str, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.scrub = scrubber(key)
        self.shown = redact_url(cfg.llm_url, self.scrub)     # what messages and params show
        base, query = split_base_url(cfg.llm_url)
        self.openai = openai.OpenAI(base_url=base, api_key=key or NO_KEY, max_retries=cfg.max_retries,
                                    timeout=cfg.timeout, default_query=query or None)

    def ask(self, prompt: str, image: Path, label: str) -> Answer:
        """A valid description of the image, or why there is none. Raises DescribeError when the
        endpoint is unusable (bad key, wrong URL, unreachable)."""
        out, reason = Answer(), ""
        messages = [{"role": "user", "content": [{"type": "text", "text": prompt},
                                                 {"type": "image_url", "image_url": {"url": image_data_url(image)}}]}]
        for attempt in range(self.cfg.max_retries + 1):
            if self.stop.is_set():
                out.interrupted = True
                return out
            out.retries += attempt > 0
            try:
                text = self._complete(messages, out)
            except openai.APIError as e:
                out.error = self._failure(e, out)
                return out
            out.text = normalise_answer(text, label)
            if out.text is not None:
                return out
            out.invalid_answers += 1
            reason = f"answer does not begin with {required_prefix(label)!r}: {_shorten(text, 120)!r}"
        out.error = f"gave up after {out.requests} request(s): {reason}"
        return out

    def _complete(self, messages: list[dict], out: Answer) -> str:
        """One chat completion (retried by openai.OpenAI as needed): its text, scrubbed ("" if it has no
        message text); DescribeError when the answer is not a chat completion at all. Requests, retries
        and tokens are counted into `out`."""
        try:
            raw = self.openai.chat.completions.with_raw_response.create(
                model=self.cfg.llm_model, messages=messages, max_tokens=self.cfg.max_tokens or openai.omit)
        except openai.APIError as e:
            _count_requests(out, int(e.request.headers.get(RETRY_COUNT_HEADER, "0")))
            raise
        _count_requests(out, raw.retries_taken)
        completion = raw.parse()
        if not hasattr(completion, "choices"):    # a 200 that is not JSON (a web page, a proxy's login form)
            kind = raw.headers.get("content-type", "no content type")
            raise DescribeError(f"{self.shown}: answered HTTP {raw.status_code} with {kind} "
                                f"({_shorten(self.scrub(raw.http_response.text), 120)!r}), not an OpenAI chat "
                                "completion; check --llm-url (the base ending in /v1)")
        usage = getattr(completion, "usage", None)
        out.prompt_tokens += getattr(usage, "prompt_tokens", 0) or 0
        out.completion_tokens += getattr(usage, "completion_tokens", 0) or 0
        try:
            content = completion.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            content = None
        return self.scrub(content) if isinstance(content, str) else ""

    def _failure(self, e: openai.APIError, out: Answer) -> str:
        """Why this image failed; raises DescribeError (without `e`, which holds the raw body) when
        no image can succeed."""
        gave_up = f"gave up after {out.requests} request(s)"
        if isinstance(e, openai.APITimeoutError):
            return f"{gave_up}: no answer within {self.cfg.timeout:g} s"
        if isinstance(e, openai.APIConnectionError):
            raise DescribeError(f"{self.shown}: endpoint unreachable ({gave_up}: "
                                f"{self.scrub(str(e.__cause__ or e))})") from None
        status = getattr(e, "status_code", 0)
        detail = f"HTTP {status}: {self._excerpt(e)}"
        if status in (401, 403):
            raise DescribeError(f"{self.shown}: {detail}; check the key in ${self.cfg.api_key_env}") from None
        if status == 404:
            raise DescribeError(f"{self.shown}: {detail}; check --llm-url (the base ending in /v1) and that "
                                f"model {self.cfg.llm_model!r} is served there") from None
        return f"{gave_up}: {detail}" if status == 429 or status >= 500 else detail

    def _excerpt(self, e: openai.APIError) -> str:
        """The server's error message, scrubbed before it is cut (a cut key would escape the scrubber)."""
        body = e.body
        text = body.get("message", body) if isinstance(body, dict) else e.message if body is None else body
        return _shorten(self.scrub(str(text)), 300)
