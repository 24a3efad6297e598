"""How the report shows a path of this machine (in report.md, report.json and figure2.json).

Rule: a path under the current working directory is shown relative to it (`outputs/generate-1`,
`sqlite:///mlflow.db`); any other absolute path only by its last two components after `…/`
(`…/x/mlflow.db`), so the report names no absolute path of the machine that built it. A relative
path is shown as given. A tracking URI keeps its scheme: `sqlite:///` + the shown path; `file:`
URIs and plain store paths show as the path; http(s) URIs as they are, without credentials; other
URIs unchanged. Free text (error messages) has every absolute path in it shown by the same rule.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from harness.report.runs import strip_credentials

ELLIPSIS = "…/"
KEEP = 2            # components kept of a path outside the working directory

# an absolute POSIX path inside text: a "/" that starts the text or follows a space, bracket, quote,
# "=", "," or ";" (so not one inside a word, a URL "https://h/#/x", "runs:/id" or a relative path "a/b")
_ABSOLUTE_IN_TEXT = re.compile(r"(?:^|(?<=[\s(\[{<'\"`=,;]))/[^\s'\"`,;:()\[\]{}<>|]+")


def show_path(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """`path` by the module's rule (`cwd`: the working directory, default the current one)."""
    text = os.fspath(path)
    if not text or not os.path.isabs(os.path.expanduser(text)):
        return text
    p = Path(os.path.normpath(os.path.expanduser(text)))
    base = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
    if base != Path(base.anchor):                     # from the root every path would be "under" it
        for a, b in ((p, base), (_resolved(p), _resolved(base))):
            try:
                rel = a.relative_to(b)
            except ValueError:
                continue
            return rel.as_posix() if rel.parts else "."
    parts = p.parts[1:]
    return ELLIPSIS + "/".join(parts[-KEEP:]) if parts else ELLIPSIS


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except OSError:
        return p


def show_uri(uri: str, cwd: str | os.PathLike | None = None) -> str:
    """A tracking URI by the module's rule."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + show_path(uri[len("sqlite:///"):], cwd)
    if uri.startswith("file://"):
        return show_path(uri[len("file://"):] or "/", cwd)
    if uri.startswith("file:"):
        return show_path(uri[len("file:"):], cwd)
    if os.path.isabs(uri):
        return show_path(uri, cwd)
    return strip_credentials(uri)


def scrub(text: str, cwd: str | os.PathLike | None = None) -> str:
    """`text` with every absolute path in it shown by the module's rule."""
    return _ABSOLUTE_IN_TEXT.sub(lambda m: show_path(m.group(0), cwd), text)


__all__ = ["ELLIPSIS", "scrub", "show_path", "show_uri"]
