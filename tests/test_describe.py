"""`describe` against a REAL OpenAI-shaped HTTP server on 127.0.0.1 (http.server in a thread), not a mock:
the official openai client in harness.describe.client talks to it over TCP.

The server checks every request (path, model, Authorization, vision message with a base64 PNG, the
key nowhere but in the Authorization header) and can answer 429 + Retry-After, 500, 422, too slowly,
with an invalid description, or send SIGINT to the main thread after N answers (a Ctrl-C mid-run).
Like a careless real service it echoes the Authorization header in its error bodies and invalid
answers, so the key-leak checks have teeth.
"""
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
from click.testing import CliRunner

from harness.config import DescribeConfig
from harness.describe import (
    CACHE_FILE,
    DescribeError,
    describe,
    redact_url,
    required_prefix,
    template_description,
)
from harness.schema import TAG_DIGEST, TAG_DIGEST_AFTER, TAG_DIGEST_BEFORE

ROOT = Path(__file__).resolve().parents[1]

KEY_ENV = "SKD_TEST_LLM_KEY"
MODEL = "gpt-4o-mini"
USAGE = {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}


# ------------------------------------------------------------------------------------ the server
class FakeLLM:
    """POST /v1/chat/completions. `script`: behaviours for the next requests in arrival order
    ("429", "500", "422", "slow", "invalid", "html"); afterwards every request is answered properly, except images
    of a class in `always_invalid`."""

    def __init__(self, key: str):
        self.key = key
        self.lock = threading.Lock()
        self.script: list[str] = []
        self.always_invalid: set[str] = set()
        self.retry_after = "1"
        self.slow_s = 1.2
        self.interrupt_after: int | None = None
        self.on_interrupt = lambda: signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        self.requests: list[dict] = []       # {"t", "sha", "label", "did"}
        self.answers = 0                     # valid answers written to the socket
        self.bad: list[str] = []             # malformed requests (must stay empty)
        self.queries: list[str] = []         # the query string of every request
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):    # keep the test output quiet
                pass

            def do_POST(self):
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def count(self, did=None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if did is None or r["did"] == did)

    @staticmethod
    def _send(h, status, obj, headers=()):
        data = json.dumps(obj).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _parse(self, h):
        """(label, image sha256) of a well-formed request, else an error text."""
        path, _, query = h.path.partition("?")
        raw = h.rfile.read(int(h.headers["Content-Length"]))
        with self.lock:
            self.queries.append(query)
        others = [f"{k}: {v}" for k, v in h.headers.items() if k.lower() != "authorization"]
        if self.key in h.path or self.key.encode() in raw or any(self.key in o for o in others):
            return "the key outside the Authorization header"
        if path != "/v1/chat/completions":
            return f"path {h.path}"
        body = json.loads(raw)
        if body.get("model") != MODEL:
            return f"model {body.get('model')!r}"
        content = body["messages"][0]["content"]
        if [c["type"] for c in content] != ["text", "image_url"]:
            return "content is not [text, image_url]"
        m = re.match(r"Analyze this (.+?) dermatology image\. .*ICD-11.*begin with 'a dermoscopic lesion photo "
                     r"of \1 for skin cancer diagnosis,\.\.\.'$", content[0]["text"])
        if not m:
            return f"prompt {content[0]['text']!r}"
        url = content[1]["image_url"]["url"]
        if not url.startswith("data:image/png;base64,"):
            return "image is not a PNG data URL"
        data = base64.b64decode(url.split(",", 1)[1])
        if not data.startswith(b"\x89PNG"):
            return "image bytes are not PNG"
        return m.group(1), hashlib.sha256(data).hexdigest()

    def handle(self, h):
        auth = h.headers.get("Authorization", "")
        parsed = self._parse(h)
        if isinstance(parsed, str):
            with self.lock:
                self.bad.append(parsed)
            return self._send(h, 400, {"error": {"message": parsed}})
        label, sha = parsed
        if auth != f"Bearer {self.key}":
            did = "401"
        else:
            with self.lock:
                did = self.script.pop(0) if self.script else "ok"
            if did == "ok" and label in self.always_invalid:
                did = "invalid"
        with self.lock:
            self.requests.append({"t": time.monotonic(), "sha": sha, "label": label, "did": did})
        if did == "401":
            return self._send(h, 401, {"error": {"message": f"Incorrect API key provided: {auth[7:]}"}})
        if did == "429":
            return self._send(h, 429, {"error": {"message": f"Rate limit reached for {auth}"}},
                              [("Retry-After", self.retry_after)])
        if did == "500":
            return self._send(h, 500, {"error": {"message": f"internal error while serving {auth}"}})
        if did == "422":
            return self._send(h, 422, {"error": {"message": f"cannot process this image ({auth})"}})
        if did == "html":        # a web page or a proxy's login form where the API should be
            page = f"<html><body>Sign in ({auth})</body></html>".encode()
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", str(len(page)))
            h.end_headers()
            h.wfile.write(page)
            return
        if did == "slow":
            time.sleep(self.slow_s)
        text = (f"Sure! ({auth}) This lesion looks benign." if did == "invalid" else
                f"A dermoscopic lesion photo of {label} for skin cancer diagnosis, well-circumscribed "
                f"macule with a pigment network (ICD-11), image {sha[:8]}.")
        ok = self._send(h, 200, {"id": "chatcmpl-test", "object": "chat.completion", "model": MODEL,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": text}}],
                                 "usage": USAGE})
        if ok and did != "invalid" and did != "slow":
            with self.lock:
                self.answers += 1
                interrupt = self.answers == self.interrupt_after
            if interrupt:        # Ctrl-C in the client process, right after answer N reached it
                self.on_interrupt()


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def demo_tiny(tmp_path_factory):
    from harness.data.demo import make_demo_dataset
    return make_demo_dataset(tmp_path_factory.mktemp("describe") / "demo", seed=3, per_class=2,
                             min_size=32, max_size=40)


@pytest.fixture
def data(demo_tiny, tmp_path):
    """A copy of the 14-image demo dataset without any description."""
    root = tmp_path / "data"
    shutil.copytree(demo_tiny, root)
    (root / "descriptions.json").unlink()
    return root


@pytest.fixture
def key(monkeypatch):
    value = "sk-test-" + "".join(secrets.choice(string.ascii_letters) for _ in range(24))
    monkeypatch.setenv(KEY_ENV, value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return value


@pytest.fixture
def llm(key):
    server = FakeLLM(key)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)             # any default path (.cache, mlruns) lands in tmp
    caplog.set_level(logging.DEBUG)


def cfg_for(data, llm=None, tmp=None, **kw):
    values = {"data_dir": str(data), "llm_url": llm.url if llm else "", "llm_model": MODEL,
              "api_key_env": KEY_ENV, "concurrency": 4, "timeout": 5.0, "max_retries": 3,
              "cache_dir": str((tmp or Path(data).parent) / "cache")}
    return DescribeConfig(**{**values, **kw})


def read_desc(root):
    return json.loads((Path(root) / "descriptions.json").read_text())


def sample_shas(root):
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p.stem for p in (Path(root) / "images").rglob("*.png")}


def labels_of(root):
    return {p.stem: p.parent.name for p in (Path(root) / "images").rglob("*.png")}


def metrics(run_id):
    return mlflow.get_run(run_id).data.metrics


def assert_no_key(key, experiment, tmp_path, mlflow_store, caplog, capfd, extra_text=""):
    """The key is nowhere: files under tmp (dataset, cache, artifacts), the MLflow store, params,
    tags and artifacts of every run of the experiment, logs, captured stdout/stderr."""
    needle = key.encode()
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert needle not in p.read_bytes(), f"key found in {p}"
    assert needle not in Path(mlflow_store.removeprefix("sqlite:///")).read_bytes(), "key in the MLflow db"
    exp = mlflow.get_experiment_by_name(experiment)
    for run in mlflow.search_runs([exp.experiment_id], output_format="list"):
        assert key not in json.dumps(run.data.params) and key not in json.dumps(run.data.tags)
        dst = tmp_path / "artifacts" / run.info.run_id
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(dst))
        for p in dst.rglob("*"):
            assert not p.is_file() or needle not in p.read_bytes(), f"key in artifact {p}"
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err, extra_text):
        assert key not in text


# ------------------------------------------------------------------------------------ tests
def test_fills_all_with_retries_then_second_run_is_free(data, llm, key, experiment, tmp_path, mlflow_store,
                                                         caplog, capfd):
    n = len(labels_of(data))
    llm.script = ["429", "500", "slow", "invalid"]
    run1 = describe(cfg_for(data, llm, timeout=0.5), experiment=experiment, progress=False)

    desc, labels, shas = read_desc(data), labels_of(data), sample_shas(data)
    assert set(desc) == set(labels)
    for sid, entry in desc.items():
        assert entry["source"] == f"llm:{MODEL}"
        assert entry["description"].startswith(required_prefix(labels[sid]) + ", well-circumscribed")
        assert shas_of_answer(entry["description"], shas) == sid        # each image got its own answer
    assert llm.bad == []
    assert llm.count() == n + 4 and llm.count("ok") == n
    m = metrics(run1)
    assert m["described/llm"] == n and m["failures"] == 0 and m["missing"] == 0
    assert m["retries"] == 4 and m["invalid_answers"] == 1 and m["requests"] == n + 4
    assert m["prompt_tokens"] == 100 * (n + 1) and m["completion_tokens"] == 20 * (n + 1)  # + the invalid one
    assert m["source/llm"] == n
    # Retry-After: 1 was honoured for the image that got the 429
    first = next(r for r in llm.requests if r["did"] == "429")
    retry = next(r for r in llm.requests if r["sha"] == first["sha"] and r["t"] > first["t"])
    assert retry["t"] - first["t"] >= 0.9
    run = mlflow.get_run(run1)
    assert run.data.params["llm_url"] == llm.url and run.data.params["llm_model"] == MODEL
    assert "Analyze this {class_name} dermatology image" in run.data.params["prompt"]
    assert run.data.tags[TAG_DIGEST_BEFORE] != run.data.tags[TAG_DIGEST_AFTER]
    assert run.data.tags[TAG_DIGEST] == run.data.tags[TAG_DIGEST_AFTER]
    assert mlflow.artifacts.load_dict(f"runs:/{run1}/descriptions.json") == desc
    assert len((tmp_path / "cache" / CACHE_FILE).read_text().splitlines()) == n

    # again, everything asked again (overwrite): all from the cache, zero requests, same file
    before = (data / "descriptions.json").read_bytes()
    asked = llm.count()
    run2 = describe(cfg_for(data, llm, overwrite=True), experiment=experiment, progress=False)
    assert llm.count() == asked
    m2 = metrics(run2)
    assert m2["described/cache"] == n and m2["requests"] == 0 and m2["prompt_tokens"] == 0
    assert (data / "descriptions.json").read_bytes() == before
    tags = mlflow.get_run(run2).data.tags
    assert tags[TAG_DIGEST_BEFORE] == tags[TAG_DIGEST_AFTER]
    assert_no_key(key, experiment, tmp_path, mlflow_store, caplog, capfd)


def shas_of_answer(text, shas):
    """The fake server puts sha[:8] of the image it was sent into the answer."""
    tag = re.search(r"image ([0-9a-f]{8})\.$", text).group(1)
    return next(sid for sha, sid in shas.items() if sha.startswith(tag))


def test_interrupted_run_keeps_answers_and_resume_asks_only_for_the_rest(data, llm, key, experiment, tmp_path,
                                                                          mlflow_store, caplog, capfd):
    """Ctrl-C as a user gives it: SIGINT to a `skindualgen describe` process, right after the 4th answer
    reached it (a signal to this test process instead raced with other tests' state in a full run)."""
    n = len(labels_of(data))
    cfg = cfg_for(data, llm, concurrency=2)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, KEY_ENV: key, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "describe", "--data-dir", cfg.data_dir, "--llm-url", cfg.llm_url,
         "--llm-model", MODEL, "--api-key-env", KEY_ENV, "--concurrency", "2", "--timeout", "5",
         "--max-retries", "3", "--cache-dir", cfg.cache_dir, "--experiment", experiment],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a pytest worker may run with SIGINT ignored (seen in full -n 2 runs), and a child inherits that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    llm.on_interrupt = lambda: proc.send_signal(signal.SIGINT)
    llm.interrupt_after = 4
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, out + err   # interrupted, not finished
    assert key not in out + err
    received = llm.answers                   # 4, plus what was in flight when Ctrl-C came
    assert 4 <= received < n
    cached = [json.loads(line) for line in (tmp_path / "cache" / CACHE_FILE).read_text().splitlines()]
    assert len(cached) == received           # every answer received is kept
    desc = read_desc(data)                   # and written to the dataset (atomically: valid JSON)
    assert 4 <= len(desc) <= received and all(e["source"] == f"llm:{MODEL}" for e in desc.values())
    assert not list(data.glob(".descriptions.json.*"))           # no temp file left behind
    interrupted = mlflow.search_runs([mlflow.get_experiment_by_name(experiment).experiment_id],
                                     output_format="list")[0]
    assert interrupted.info.status == "KILLED"                 # Ctrl-C: stopped, not failed

    llm.interrupt_after = None
    asked_before = llm.count()
    run = describe(cfg_for(data, llm, concurrency=2), experiment=experiment, progress=False)
    resumed = llm.requests[asked_before:]
    assert len(resumed) == n - received      # only the rest
    asked_twice = {r["sha"] for r in resumed} & {r["sha"] for r in llm.requests[:asked_before]}
    assert asked_twice == set()
    assert set(read_desc(data)) == set(labels_of(data))
    m = metrics(run)
    assert m["described/llm"] == n - received and m["described/cache"] == received - len(desc)
    assert_no_key(key, experiment, tmp_path, mlflow_store, caplog, capfd)


def test_failed_images_are_listed_with_the_echoed_key_scrubbed(data, llm, key, experiment, tmp_path, mlflow_store,
                                                                caplog, capfd):
    """A 422 (this image will not do: not retried) whose body echoes the key, and an image whose every
    attempt times out, are listed as failures, key-free. The URL may end in /chat/completions and
    carry a query: the openai client gets the base and the query separately."""
    n = len(labels_of(data))
    llm.script = ["422", "slow", "slow"]
    llm.slow_s = 0.8
    url = llm.url + "/chat/completions?api-version=2024-06-01"
    run = describe(cfg_for(data, llm, llm_url=url, concurrency=1, max_retries=1, timeout=0.3),
                   experiment=experiment, progress=False)
    assert llm.bad == [] and set(llm.queries) == {"api-version=2024-06-01"}
    assert llm.count() == n + 1 and llm.count("422") == 1 and llm.count("slow") == 2
    failed = mlflow.artifacts.load_dict(f"runs:/{run}/describe_failures.json")
    assert sorted(failed.values()) == ["HTTP 422: cannot process this image (Bearer ***)",
                                       "gave up after 2 request(s): no answer within 0.3 s"]
    m = metrics(run)
    assert m["failures"] == 2 and m["missing"] == 2 and m["described/llm"] == n - 2 and m["retries"] == 1
    assert set(read_desc(data)) == set(labels_of(data)) - set(failed)
    assert mlflow.get_run(run).data.params["llm_url"] == url
    assert_no_key(key, experiment, tmp_path, mlflow_store, caplog, capfd)


def test_invalid_answers_are_flagged_not_stored_via_cli(data, llm, key, experiment, tmp_path, mlflow_store,
                                                        caplog, capfd):
    from entrypoints.describe import describe as describe_cmd
    labels = labels_of(data)
    melanoma = {sid for sid, lab in labels.items() if lab == "melanoma"}
    llm.always_invalid = {"melanoma"}
    llm.script = ["500", "429"]
    llm.retry_after = "0"
    args = ["--data-dir", str(data), "--llm-url", llm.url, "--llm-model", MODEL, "--api-key-env", KEY_ENV,
            "--overwrite", "false", "--concurrency", "3", "--timeout", "5", "--max-retries", "1",
            "--cache-dir", str(tmp_path / "cache"), "--experiment", experiment]
    result = CliRunner().invoke(describe_cmd, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "2 image(s) still have no description" in result.output
    desc = read_desc(data)
    assert set(desc) == set(labels) - melanoma
    exp = mlflow.get_experiment_by_name(experiment)
    (run,) = mlflow.search_runs([exp.experiment_id], output_format="list")
    m = run.data.metrics
    assert m["failures"] == len(melanoma) and m["missing"] == len(melanoma)
    assert m["invalid_answers"] == 2 * len(melanoma)               # 1 + max_retries attempts each
    failed = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/describe_failures.json")
    assert set(failed) == melanoma
    assert all("does not begin with" in reason and "***" in reason for reason in failed.values())
    assert llm.count("429") == 1 and llm.count("500") == 1
    assert_no_key(key, experiment, tmp_path, mlflow_store, caplog, capfd, extra_text=result.output)

    # every image described, then a rewrite (--overwrite true, a fresh cache) whose melanoma answers are
    # invalid again: those keep their old description, and the exit status says the rewrite is incomplete
    llm.always_invalid = set()
    assert CliRunner().invoke(describe_cmd, args, catch_exceptions=False).exit_code == 0
    described = read_desc(data)
    assert set(described) == set(labels)
    llm.always_invalid = {"melanoma"}
    rewrite = [*args[:args.index("--overwrite")], "--overwrite", "true",
               *args[args.index("--overwrite") + 2:args.index("--cache-dir")], "--cache-dir", str(tmp_path / "fresh"),
               "--experiment", experiment]
    result = CliRunner().invoke(describe_cmd, rewrite, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert f"{len(melanoma)} image(s) could not be described anew" in result.output
    after = read_desc(data)
    assert {sid: after[sid] for sid in melanoma} == {sid: described[sid] for sid in melanoma}   # old ones kept


def test_template_fallback_is_deterministic_and_keeps_existing(data, demo_tiny, tmp_path, experiment):
    other = tmp_path / "other"
    shutil.copytree(data, other)
    original = json.loads((demo_tiny / "descriptions.json").read_text())
    keep = sorted(original)[:3]
    (other / "descriptions.json").write_text(json.dumps({k: original[k] for k in keep}))

    run1 = describe(DescribeConfig(data_dir=str(data)), experiment=experiment, progress=False)
    run2 = describe(DescribeConfig(data_dir=str(other)), experiment=experiment, progress=False)
    a, b = read_desc(data), read_desc(other)
    labels = labels_of(data)
    assert set(a) == set(labels) == set(b)
    for sid in labels:
        assert a[sid]["source"] == "template" and a[sid]["description"].startswith(required_prefix(labels[sid]))
        if sid in keep:
            assert b[sid] == original[sid]                           # left as it was
        else:
            assert b[sid] == a[sid]                                  # same image -> same text
    sid = sorted(labels)[5]
    image = next(data.rglob(f"images/*/{sid}.png"))
    mask = next(data.rglob(f"masks/*/{sid}.png"))
    assert template_description(labels[sid], image, mask) == a[sid]["description"]
    assert metrics(run1)["described/template"] == len(labels)
    assert metrics(run2)["described/template"] == len(labels) - 3
    assert metrics(run2)["source/dataset"] == 3
    # a third run has nothing to do and changes nothing
    before = (data / "descriptions.json").read_bytes()
    run3 = describe(DescribeConfig(data_dir=str(data)), experiment=experiment, progress=False)
    assert metrics(run3)["n_to_describe"] == 0 and (data / "descriptions.json").read_bytes() == before


def test_bad_key_unreachable_endpoint_and_config_errors_never_show_the_key(data, llm, key, experiment, tmp_path,
                                                                           mlflow_store, caplog, capfd,
                                                                           monkeypatch):
    from entrypoints.describe import describe as describe_cmd
    # a wrong key: HTTP 401 stops the run at once, naming the variable, not the key
    monkeypatch.setenv("SKD_OTHER_KEY", key[::-1])
    with pytest.raises(DescribeError, match=r"HTTP 401.*\$SKD_OTHER_KEY") as e:
        describe(cfg_for(data, llm, api_key_env="SKD_OTHER_KEY", concurrency=1), experiment=experiment,
                 progress=False)
    assert key[::-1] not in str(e.value) and llm.count("401") >= 1
    assert key[::-1] not in "".join(traceback.format_exception(e.value))     # as Python would print it
    assert not (data / "descriptions.json").exists()
    # nothing listening: unreachable after the retries
    with pytest.raises(DescribeError, match="unreachable"):
        describe(cfg_for(data, llm, llm_url="http://127.0.0.1:9/v1", max_retries=1, concurrency=1),
                 experiment=experiment, progress=False)
    # an answer that is not JSON at all stops the run in one line, naming what came back (key scrubbed)
    llm.script = ["html"] * 8
    with pytest.raises(DescribeError, match=r"answered HTTP 200 with text/html \('<html><body>Sign in "
                                            r"\(Bearer \*\*\*\).*not an OpenAI chat completion") as e:
        describe(cfg_for(data, llm, concurrency=1, max_retries=0), experiment=experiment, progress=False)
    assert key not in str(e.value) and not (data / "descriptions.json").exists()
    llm.script = []
    runner = CliRunner()
    for args in (["--api-key-env", key], ["--llm-url", f"http://user:{key}@127.0.0.1:1/v1"]):
        result = runner.invoke(describe_cmd, ["--data-dir", str(data), "--experiment", experiment, *args])
        assert result.exit_code == 2 and key not in result.output, result.output
    result = runner.invoke(describe_cmd, ["--overwrite", "true", "--experiment", experiment])   # the demo
    assert result.exit_code == 2 and "embedded demo dataset" in result.output
    assert redact_url(f"https://u:{key}@h/v1?api-version=1&api_key={key}") == \
        "https://***@h/v1?api-version=1&api_key=***"
    assert_no_key(key, experiment, tmp_path, mlflow_store, caplog, capfd)
    assert key[::-1] not in caplog.text


def test_train_test_layout_writes_where_the_reader_looks(data, tmp_path, experiment):
    """ISIC-GPT with train/ and test/: a part's own descriptions.json wins when read, so answers go
    there when it exists, else to the top-level file."""
    from harness.data.layouts import load_dataset
    root = tmp_path / "split"
    for i, img in enumerate(sorted((data / "images").rglob("*.png"))):
        part = "test" if i % 2 else "train"
        for kind, src in (("images", img), ("masks", data / "masks" / img.parent.name / img.name)):
            dst = root / part / kind / img.parent.name / img.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    train_ids = sorted(p.stem for p in (root / "train" / "images").rglob("*.png"))
    (root / "train" / "descriptions.json").write_text(json.dumps({train_ids[0]: "kept as it is"}))
    run = describe(DescribeConfig(data_dir=str(root)), experiment=experiment, progress=False)
    in_train = read_desc(root / "train")
    assert set(in_train) == set(train_ids) and in_train[train_ids[0]] == "kept as it is"
    assert set(read_desc(root)) == {p.stem for p in (root / "test" / "images").rglob("*.png")}
    assert all(s.description for s in load_dataset(root).samples)
    assert metrics(run)["missing"] == 0 and metrics(run)["source/dataset"] == 1
