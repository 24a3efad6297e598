"""Where downloaded weights are looked for, read from the environment at call time.

huggingface_hub reads HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, when it is imported; the
harness passes the cache folder explicitly instead, so a value set later in the process (by a
caller or a test) is the one used. torch hub reads TORCH_HOME at call time by itself
(torch.hub.get_dir()).

    hf_hub_cache()    the hub cache folder, chosen as huggingface_hub chooses it
    offline()         True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: nothing is downloaded
    hf_cache_place(repo_id, revision, file)   where a repo's file lies in that cache (for messages)
"""
from __future__ import annotations

import os
from pathlib import Path

TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def hf_hub_cache() -> Path:
    """HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub,
    else ~/.cache/huggingface/hub: huggingface_hub's own order of precedence."""
    home = os.getenv("HF_HOME") or os.path.join(os.getenv("XDG_CACHE_HOME") or os.path.join("~", ".cache"),
                                                "huggingface")
    hub = os.getenv("HF_HUB_CACHE") or os.getenv("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in TRUE_VALUES


def hf_cache_place(repo_id: str, revision: str = "", file: str = "") -> str:
    """Where a file of a model repo goes in that cache, in words for a message:
    `<cache>/models--<owner>--<name>/snapshots/<revision>/<file>`, and for the main branch
    `.../snapshots/<commit>/<file>` with the commit in `.../refs/main`."""
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    if revision:
        return f"{repo / 'snapshots' / revision}/{file}"
    return f"{repo / 'snapshots'}/<commit>/{file} (with <commit> in {repo / 'refs' / 'main'})"
