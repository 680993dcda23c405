"""Every relative link, anchor and image in the repository's markdown files resolves, with GitHub's
rules for heading anchors (lower case, punctuation dropped, spaces to hyphens, -1, -2... for repeats)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO

FENCED = re.compile(r"```.*?```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    # ours only: not tools' caches and folders (.venv, .git, .pytest_cache, ...) nor run output
    skip = {"node_modules", "test-artifacts", "runs"}
    return sorted(p for p in REPO.rglob("*.md")
                  if not any(part in skip or part.startswith(".") for part in p.relative_to(REPO).parts))


def heading_anchors(text: str) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCED.sub("", text).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in LINK.findall(FENCED.sub("", page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text()):
            broken.append(f"{link}: no such heading")
    return broken


def test_the_anchor_rule_is_githubs():
    assert heading_anchors("# When the server is full, and when it stops\n## Load\n## Load\n") == {
        "when-the-server-is-full-and-when-it-stops", "load", "load-1"}


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []
