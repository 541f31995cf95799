"""The documentation names only what the repository holds.

Every relative link (`[x](path)`, `<img src="path">`) and every repository path in backticks or
in a code block of README.md, docs/*.md and benchmarks/README.md exists; links into a page's
section find that heading; every config key is documented; README.md stays a short guide; and
no file names the outside documents the project was once written against. Fast: no TensorFlow.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
README_MAX_LINES = 300

# Paths whose first part is one of these are the repository's; anything else in backticks
# (runs/..., data/..., a venv, a checkpoint name) is something a command makes or a user has.
REPO_TOP = ("mobilevision", "configs", "scripts", "tests", "benchmarks", "docs", ".ci")
REPO_FILES = ("setup.py", "pytest.ini", "README.md")
# Written by the benchmarks when they run (ignored by git).
OUTPUTS = ("benchmarks/results",)

# The names nothing in the repository may mention: documents outside it. Spelled in pieces so
# this file does not name them itself.
FORBIDDEN = ("PAPER" + ".md", "shared/" + "DESIGN.md")
SKIP_DIRS = {".git", ".venv", ".mpvenv", "node_modules", "__pycache__", ".pytest_cache", "runs",
             "data", "build", "dist"}

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"")
TICKS = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
PATHLIKE = re.compile(r"(?<![\w./-])((?:\.ci|mobilevision|configs|scripts|tests|benchmarks|docs)"
                      r"/[\w./*-]*)")
CONFIG_NAME = re.compile(r"^[a-z0-9]+_[a-z0-9_]+\.yaml$")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def _exists(path: str) -> bool:
    """A repository path (relative to the root) exists; `*` matches as a glob."""
    path = path.rstrip("/").rstrip(".,;:")
    if any(path == o or path.startswith(o + "/") for o in OUTPUTS):
        return True
    if "*" in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


def _repo_paths(text: str):
    """Repository paths a page names: in backticks, and in code blocks (commands)."""
    fenced = FENCE.findall(text)
    inline = TICKS.findall(FENCE.sub("", text))
    for chunk in [*inline, *fenced]:
        for match in PATHLIKE.finditer(chunk):
            path = match.group(1)
            if not any(c in path for c in "<>{}"):
                yield path
    for chunk in inline:
        chunk = chunk.strip()
        if chunk in REPO_FILES:
            yield chunk
        elif CONFIG_NAME.match(chunk):  # a bundled config named alone
            yield f"configs/{chunk}"


def _links(text: str):
    text = FENCE.sub("", text)
    yield from LINK.findall(text)
    yield from IMG.findall(text)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_exists(page):
    missing = []
    for target in _links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            missing.append(f"{target} (no {rel})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            missing.append(f"{target} (no heading '#{anchor}' in {rel})")
    assert not missing, f"{page.relative_to(ROOT)} links to what is not there: {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_exists(page):
    missing = sorted({p for p in _repo_paths(page.read_text(encoding="utf-8")) if not _exists(p)})
    assert not missing, f"{page.relative_to(ROOT)} names files the repository lacks: {missing}"


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"
    # The two quick-start commands, verbatim: CI (.ci/run) runs the second.
    text = "\n".join(lines)
    assert "pip install -e . && python scripts/train.py --config shapes_ssdlite.yaml" in text
    assert 'pip install -e ".[test]" && python -m pytest' in text


def test_every_config_key_is_documented():
    from mobilevision.config import SCHEMA

    text = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    missing = [key for key in SCHEMA if f"`{key}`" not in text]
    assert not missing, f"docs/configs.md does not list the config keys {missing}"


def _repository_files():
    """Tracked and untracked (not ignored) files; without git, a walk that skips the venvs,
    build outputs and generated data."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, check=True, timeout=60).stdout
        files = [ROOT / f for f in out.decode("utf-8", "replace").split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in ROOT.rglob("*") if p.is_file()
                 and not SKIP_DIRS.intersection(p.relative_to(ROOT).parts)]
    return [f for f in files if f.is_file() and not any(part.endswith(".egg-info")
                                                        for part in f.relative_to(ROOT).parts)]


def test_no_file_names_documents_outside_the_repository():
    found = []
    for path in _repository_files():
        if path.stat().st_size > 5_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # a picture or another binary file
            continue
        text = data.decode("utf-8", "replace")
        for name in FORBIDDEN:
            for n, line in enumerate(text.splitlines(), 1):
                if name in line:
                    found.append(f"{path.relative_to(ROOT)}:{n}: {name}")
    assert not found, "the repository names files it does not hold:\n" + "\n".join(found)
