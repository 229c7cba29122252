"""The README stays a front door, and the links between it and the manual in docs/ stay whole."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.core import config

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced blocks and code spans: where a Markdown link is a link."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", page.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _relative_links(page: Path) -> list[str]:
    links = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link, re.I)]


def test_the_readme_stays_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; keep it under {MAX_README_LINES}, the rest in docs/"


def test_the_pages_were_found():
    assert README in PAGES and len(PAGES) > 10, PAGES  # the glob below must not pass on an empty list


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    links = _relative_links(page)
    broken = []
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading with anchor #{anchor} in {target.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_links_every_page_of_the_manual():
    linked = {(README.parent / link.partition("#")[0]).resolve() for link in _relative_links(README)}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link docs/{', docs/'.join(unlinked)}"


def test_every_config_key_is_in_the_configuration_table():
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = [f"{section.name}.{field.name}"
            for section in dataclasses.fields(config.Config)
            for field in dataclasses.fields(section.type if isinstance(section.type, type) else
                                            getattr(config, section.type))]
    assert len(keys) > 60, keys
    missing = [key for key in keys if f"| `{key}` |" not in doc]
    assert not missing, f"docs/configuration.md has no table row for {', '.join(missing)}"
