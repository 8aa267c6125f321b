"""User docs: every relative link in README.md, CONTRIBUTING.md, docs/ and examples/ resolves
(files and #anchors), and nothing names a path of the machine the docs were written on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        *(ROOT / "docs").glob("*.md"),
        *list((ROOT / "examples").glob("**/README.md")),
    ]
)
DOCS = [p for p in DOCS if "node_modules" not in p.parts]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```.*?```", re.S)


def _anchors(path: Path) -> set[str]:
    out = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            out.add(slug)
    return out


def test_there_are_docs() -> None:
    names = {p.name for p in DOCS}
    assert {"README.md", "CONTRIBUTING.md", "configuration.md", "deployment.md"} <= names
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", doc.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s):, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists() or (
            anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved)
        ):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_name_no_machine_paths(doc: Path) -> None:
    """Docs never name where this checkout happens to live (the folder above it)."""
    assert str(ROOT.parent) + "/" not in doc.read_text()
