"""Build hook: the top-level `mappings/` folder ships inside the package as `bspgate/mappings`.

The provider mappings stay where contributors edit them (the repository's `mappings/`); a built
wheel carries a copy, so an installed bspgate finds them from any folder. An editable install
reads the checkout's folder directly (see `bspgate.mapping.loader.shipped_mappings_dir`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MAPPINGS = Path(__file__).resolve().parent / "mappings"


class BuildWithMappings(build_py):
    """`build_py` that copies mappings/ (YAML files only) into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False) or not MAPPINGS.is_dir():
            return
        target = Path(self.build_lib) / "bspgate" / "mappings"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            MAPPINGS, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
        )


setup(cmdclass={"build_py": BuildWithMappings})
