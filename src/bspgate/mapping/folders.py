"""Where provider files are: the mappings folders, which one holds a file, how a path is shown.

bspgate reads provider folders from several mappings folders, the shipped one first, then the
config's `mappings:` folders (or `--mappings`). A later folder adds providers or overrides
earlier ones by name, file by file: `mapping.yaml` and `outbound.yaml` are each read from the
last folder that has one. `extends: other` finds `other` the same way; `extends:` naming the
provider itself (a user folder tweaking the shipped provider of that name) means the next folder
down that has the file. This module only answers questions about paths: it reads no file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# One folder, or several: a later folder adds providers or overrides earlier ones by name (the
# shipped mappings first, then the config's `mappings:` folders).
Roots = Path | Sequence[Path]


def roots_of(root: Roots) -> tuple[Path, ...]:
    """`root` as a tuple of folders, in order (the shipped one first)."""
    return (root,) if isinstance(root, Path) else tuple(root)


def shipped_mappings_dir() -> Path:
    """The mappings that ship with bspgate: package data when installed, else the checkout's."""
    here = Path(__file__).resolve()
    packaged = here.parent.parent / "mappings"  # <site-packages>/bspgate/mappings (a wheel)
    if packaged.is_dir():
        return packaged
    return here.parents[3] / "mappings"  # src/bspgate/mapping/ -> the repository's mappings/


def holder(root: Roots, name: str, file: str, below: int | None = None) -> int | None:
    """The index of the last folder among `root` (the first `below` of them, when given) that
    holds `name/file`, or None."""
    folders = roots_of(root)
    for index in reversed(range(len(folders) if below is None else below)):
        if (folders[index] / name / file).is_file():
            return index
    return None


def parent_holder(root: Roots, name: str, at: int, parent: str, file: str) -> int | None:
    """Where `extends: parent`, written in `root[at]/name/file`, finds the file it extends.

    Another provider is found as any provider is (the last folder that has it); the provider's
    own name is the next folder down, so a user folder can start from the shipped provider it
    overrides.
    """
    return holder(root, parent, file, below=at if parent == name else None)


def folder_of(root: Roots, name: str, file: str) -> Path | None:
    """The folder among `root` whose `name/file` is the provider's (the last that has one)."""
    index = holder(root, name, file)
    return None if index is None else roots_of(root)[index]


def provider_names(root: Roots, file: str) -> list[str]:
    """The providers under `root` whose folder holds `file`, sorted."""
    return sorted(
        {
            p.name
            for folder in roots_of(root)
            if folder.is_dir()
            for p in folder.iterdir()
            if (p / file).is_file()
        }
    )


class ExtendsError(Exception):
    """`extends:` names no file to extend, or a chain that comes back to itself."""


Chain = tuple[tuple[int, str], ...]  # the files of an `extends` chain: (folder index, provider)


def extended_file(
    roots: tuple[Path, ...], name: str, at: int, parent: str, file: str, seen: Chain
) -> tuple[int, Chain]:
    """Where `extends: parent`, written in `roots[at]/name/file` (the chain below it: `seen`),
    finds its file: (folder index, the chain including this file). Raises `ExtendsError`."""
    parent_at = parent_holder(roots, name, at, parent, file)
    if parent_at is None and parent == name:
        raise ExtendsError(
            f"circular extends: {name} -> {name} (extending its own name starts from the "
            f"{name}/{file} of a mappings folder before {display_path(roots[at])}, and none "
            "has one)"
        )
    if parent_at is None:
        raise ExtendsError(f"no {parent}/{file} to extend")
    chain = (*seen, (at, name))
    if (parent_at, parent) in chain:
        names = [provider for _at, provider in chain]
        raise ExtendsError(f"circular extends: {' -> '.join((*names, parent))}")
    return parent_at, chain


def display_path(path: Path) -> str:
    """`path` as a person can open it: relative to the working folder when under it (so the
    shipped files read `mappings/<provider>/…` from a checkout), else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)
