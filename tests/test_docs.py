"""The documentation: a short README that starts with what works, and docs whose links and paths resolve.

README.md is the front door (what it is, install, the first minute, links to the task guides); the
rest lives in docs/*.md and the measurements in BENCHMARKS.md. These tests keep it that way: the
README's size and first screen, every relative link (file and #anchor) of README.md, BENCHMARKS.md
and docs/*.md, every ``refineseg/...`` path those pages name, and the README's Python examples using
only the top-level API (``refineseg.__all__``). ``docs/_notes_*.md`` are working notes, not pages.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest

import refineseg

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 15_000  # characters
FIRST_SCREEN_LINES = 25


def pages() -> list[Path]:
    """The Markdown pages a reader follows: README.md, BENCHMARKS.md and docs/*.md, not the notes."""
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.startswith("_"))
    return [README, ROOT / "BENCHMARKS.md", *docs]


FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """``text`` without fenced code blocks (a ``# comment`` in a bash block is no heading)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercased, punctuation removed, spaces -> '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every #anchor of a Markdown page: its headings' slugs (repeats get -1, -2, ...) and <a id=...>."""
    text = prose(path.read_text(encoding="utf-8"))
    found: set[str] = set(HTML_ANCHOR.findall(text))
    counts: dict[str, int] = {}
    for heading in HEADING.findall(text):
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """The link targets of a page outside code: inline links, images and reference definitions."""
    text = INLINE_CODE.sub("code", prose(path.read_text(encoding="utf-8")))
    return LINK.findall(text) + REFERENCE_DEFINITION.findall(text)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if file_part.startswith("/"):
            problems.append(f"{target}: absolute path (use one relative to {path.relative_to(ROOT)})")
        elif not resolved.exists():
            problems.append(
                f"{target}: {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved} does not exist"
            )
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    problems = broken_links(page)
    assert not problems, f"{page.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(problems)


PACKAGE_PATH = re.compile(r"(?<![\w./-])refineseg/(?:[\w.-]+/)*[\w.-]*")


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_path_exists(page):
    """``refineseg/training/losses.py``, ``refineseg/models/backbones/``: what a page names is there."""
    text = page.read_text(encoding="utf-8")
    named = {m.rstrip(".") for m in PACKAGE_PATH.findall(text)}
    named = {p for p in named if p.endswith((".py", "/"))}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {', '.join(missing)}"


DOTTED_NAME = re.compile(r"(?<![\w/.-])refineseg(?:\.\w+)+")


def resolve(dotted: str) -> bool:
    """Whether ``refineseg.a.b.c`` names a module or an attribute of one (True when an extra is missing)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not e.name.startswith("refineseg"):
                return True  # an optional dependency this environment lacks: not the page's fault
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_dotted_name_resolves(page):
    """``refineseg.data.build_dataset``, ``refineseg.models.MODELS``: what a page names can be imported."""
    names = sorted(set(DOTTED_NAME.findall(page.read_text(encoding="utf-8"))))
    missing = [name for name in names if not resolve(name)]
    assert not missing, f"{page.relative_to(ROOT)} names what does not exist: {', '.join(missing)}"


def test_path_and_link_checks_find_problems(tmp_path, monkeypatch):
    """The checkers themselves: a missing file, a missing anchor and a heading inside code are caught."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## Fast by default: `--amp auto`\n")
    page.write_text(
        "[ok](other.md#fast-by-default---amp-auto) [gone](missing.md) [bad](other.md#nope)\n"
        "[self](#title) `[in code](missing2.md)`\n\n```bash\n# not a heading\n[x](missing3.md)\n```\n"
        "# Title\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = broken_links(page)
    assert len(problems) == 2 and "missing.md" in problems[0] and "#nope" in problems[1], problems
    assert "not-a-heading" not in anchors(page) and "title" in anchors(page)
    assert resolve("refineseg.models.MODELS") and not resolve("refineseg.tiling.predict_tiled")


def test_readme_is_short():
    size = len(README.read_text(encoding="utf-8"))
    assert size <= README_LIMIT, f"README.md has {size} characters (at most {README_LIMIT}): move details to docs/"


def test_readme_starts_with_make_demo_and_make_test():
    """The first screen shows the two commands that work on a fresh clone, in a code block, in that order."""
    first_screen = "\n".join(README.read_text(encoding="utf-8").splitlines()[:FIRST_SCREEN_LINES])
    block = re.search(r"^```(?:bash|sh|shell|console)?\n(.*?)^```", first_screen, re.M | re.S)
    assert block, f"no code block in the first {FIRST_SCREEN_LINES} lines of README.md"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]
    assert commands[:2] == ["make demo", "make test"], commands


def readme_python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_readme_python_uses_only_the_public_api():
    """README examples: ``import refineseg`` and ``refineseg.<name>`` with name in ``refineseg.__all__``."""
    blocks = readme_python_blocks()
    assert blocks, "README.md has no Python example"
    public = set(refineseg.__all__)
    problems = []
    for i, code in enumerate(blocks, 1):
        tree = ast.parse(code, f"README python block {i}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "refineseg":
                problems.append(f"block {i}, line {node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                problems += [
                    f"block {i}, line {node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("refineseg.") or (a.name == "refineseg" and a.asname)
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "refineseg"
                and node.attr not in public
            ):
                problems.append(f"block {i}, line {node.lineno}: refineseg.{node.attr} is not in refineseg.__all__")
    assert not problems, "README.md Python examples go beyond the top-level API:\n  " + "\n  ".join(problems)
