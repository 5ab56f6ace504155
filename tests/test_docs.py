"""The documentation holds together: every relative link resolves, and the README stays a user's page.

Files move (code and docs alike), and a link to a moved file or a renamed heading breaks silently on
GitHub; this finds it in CI instead. Anchors are checked against the target's headings, slugged as
GitHub slugs them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
# The README is for users; design notes, tables and format details live in docs/ (CONTRIBUTING.md).
# 430: the user sections (own models, troubleshooting, LoRA habits, quantized bases) each stay short.
README_MAX_LINES = 430

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target), with an optional "title"; text may hold `code` but no brackets.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, where a link is a link."""
    lines, in_code = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not `-` or `_`), spaces to `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: its headings' slugs, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    """The link targets of a markdown file that point into the repository (no scheme, no mailto)."""
    targets = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = m.group(1)
            if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
                continue
            targets.append(target)
    return targets


def test_the_slug_is_githubs():
    assert slug("Serve: ComfyUI's API and the visual editor") == "serve-comfyuis-api-and-the-visual-editor"
    assert slug("LoRA operations at SD1.5 size") == "lora-operations-at-sd15-size"
    assert slug("A schedule on the demo: `outline` off after 40% of the steps") == \
        "a-schedule-on-the-demo-outline-off-after-40-of-the-steps"
    assert slug("Per-block weights on transformer denoisers (SD3, Flux)") == \
        "per-block-weights-on-transformer-denoisers-sd3-flux"


def test_the_checked_files_are_there():
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert {"README.md", "CONTRIBUTING.md", "docs/CONTRACT.md", "docs/architecture.md", "docs/formats.md",
            "docs/performance.md", "docs/scale-out.md"} <= names
    assert all(relative_links(ROOT / n) for n in ("README.md", "CONTRIBUTING.md", "docs/architecture.md"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(doc):
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file "
                          f"{dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_readme_is_a_users_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move internals into docs/")
