"""`bspgate mappings check|test|new`: the authoring tools for provider folders.

- `check` loads every mapping and send form (schema, expressions, verify and auth schemes,
  canonical field paths) and reads every case file, naming file and line for each error.
- `test [PROVIDER] [--update]` runs the golden cases (inbound, signed, send); `--update` first
  writes the actual output into each case's `expect` for review.
- `new NAME --from payload.json` writes a skeleton folder: mapping.yaml, outbound.yaml, a test
  channel and a first case holding the payload, into `--mappings`, else the config's own
  `mappings:` folder, else `./mappings`: never into the mappings an installed bspgate ships.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from bspgate.errors import MappingLoadError

NAME_PATTERN = "^[a-z][a-z0-9_]*$"


def _new_root(args: argparse.Namespace) -> Path:
    """The folder `new` writes into: --mappings, else the config's own (last) `mappings:`
    folder, else ./mappings. Never the shipped folder: in a wheel that is site-packages."""
    from bspgate.cli import _config_path, _read_settings

    if getattr(args, "mappings", None):
        return Path(args.mappings)
    if _config_path(args).is_file():
        dirs = _read_settings(args).mapping_dirs
        if len(dirs) > 1:  # the first is always the shipped folder
            return dirs[-1]
    return Path("mappings")


def _roots(args: argparse.Namespace) -> list[Path]:
    from bspgate.cli import _mapping_roots  # shipped, then the config's (or --mappings) folders

    return _mapping_roots(args)


def _inside_package(folder: Path) -> bool:
    """True for a folder inside the installed bspgate package (its shipped mappings)."""
    import bspgate

    package = Path(bspgate.__file__).resolve().parent
    return folder.resolve().is_relative_to(package)


def _shown(path: Path) -> str:
    """`path` as the user can open it: relative to the working folder when under it."""
    from bspgate.mapping.folders import display_path

    return display_path(path)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")


def _check_cases(roots: list[Path], name: str) -> list[str]:
    from bspgate.mapping.cases import load_case
    from bspgate.mapping.loader import iter_case_files
    from bspgate.mapping.send_cases import (
        CHANNEL_FILE,
        OFFLINE_BASE,
        channel_file,
        is_send_case,
        load_channel,
        load_send_case,
    )

    problems = []
    channel = channel_file(roots, name)
    files = [channel] if channel.is_file() else []
    for path in [*files, *iter_case_files(roots, name)]:
        try:
            if path.name == CHANNEL_FILE:
                load_channel(roots, name, OFFLINE_BASE)  # as `test` reads it: schema and lines
            elif is_send_case(path):
                load_send_case(path)
            else:
                load_case(path)
        except MappingLoadError as exc:
            problems.append(str(exc))
    return problems


def cmd_mappings(args: argparse.Namespace) -> int:
    """check / test (with --update) over every provider folder, or the one named."""
    from bspgate.mapping.loader import (
        MAPPING_FILE,
        iter_case_files,
        load_mapping,
        mapping_names,
        mapping_root,
    )
    from bspgate.outbound.spec import load_outbound, outbound_root

    roots = _roots(args)
    listed = roots[-1:] if getattr(args, "mappings", None) else roots
    names = [args.provider] if getattr(args, "provider", None) else mapping_names(listed)
    if not names:
        hint = next(
            (
                f"; {_shown(folder)} holds a {MAPPING_FILE} itself: give the folder that holds "
                "provider folders, not a provider folder"
                for folder in listed
                if (folder / MAPPING_FILE).is_file()
            ),
            "",
        )
        sys.stderr.write(f"bspgate: no mappings under {', '.join(map(str, listed))}{hint}\n")
        return 1
    failures = passed = 0
    for name in names:
        if mapping_root(roots, name) is None:
            looked = ", ".join(_shown(folder) for folder in roots)
            _say(
                f"FAIL no {name}/mapping.yaml in {looked}: give the folder that holds it with "
                "--mappings DIR, or list it under `mappings:` in the config"
            )
            failures += 1
            continue
        try:
            spec = load_mapping(roots, name)
        except MappingLoadError as exc:
            _say(f"FAIL {exc}")
            failures += 1
            continue
        if args.action == "check":
            _say(f"ok   {spec.file} ({len(spec.rules)} rules)")  # rules after `extends`
            passed += 1
            if outbound_root(roots, name) is not None:
                try:
                    send_form = load_outbound(roots, name)  # `extends` reaches every folder
                except MappingLoadError as exc:
                    _say(f"FAIL {exc}")
                    failures += 1
                else:
                    _say(f"ok   {send_form.file}")
                    passed += 1
            problems = _check_cases(roots, name)
            for problem in problems:
                _say(f"FAIL {problem}")
            failures += len(problems)
            continue
        failures, passed = _test(roots, spec, iter_case_files(roots, name), args, failures, passed)
    _say(f"{passed} passed, {failures} failed")
    return 1 if failures else 0


def _test(
    roots: list[Path], spec: Any, paths: Any, args: argparse.Namespace, failures: int, passed: int
) -> tuple[int, int]:
    from bspgate.mapping.case_update import update_case
    from bspgate.mapping.send_cases import run_file

    paths = list(paths)
    if not paths:  # "0 passed, 0 failed" read as a pass: a mapping is tested by its cases
        from bspgate.mapping.loader import cases_dir

        cases = cases_dir(roots, spec.name)
        _say(
            f"FAIL {spec.name}: no cases in {_shown(cases)}/ (a payload and the events it must "
            "give; `bspgate mappings new --from` writes the first)"
        )
        return failures + 1, passed
    if not any(path.stem.startswith("signed") for path in paths):
        _say(
            f"warn {spec.name}: no signed case (cases/signed_*.yaml: a request exactly as the "
            "provider signed it), so nothing shows that `verify` accepts the provider's signature"
        )
    for path in paths:
        name = f"{spec.name}/{path.stem}"
        if getattr(args, "update", False):
            try:
                update = update_case(roots, spec, path)
            except MappingLoadError as exc:
                _say(f"FAIL {exc}")
                failures += 1
                continue
            except Exception as exc:  # one broken case never stops the others or the summary
                _say(f"FAIL {name}: {type(exc).__name__}: {exc}")
                failures += 1
                continue
            if update.changed:
                _say(f"upd  {name}")
            if update.engine_error is not None:
                _say(
                    f"warn {name}: not updated: the mapping engine failed on this case "
                    f"({update.engine_error}); an engine error is never an expected result"
                )
            if update.quarantine is not None:
                _say(
                    f"warn {name}: --update wrote a quarantine as the expected result "
                    f"({update.quarantine}); unless this payload must be refused, fix the "
                    "mapping and run --update again"
                )
        try:
            result = run_file(roots, spec, path)
        except Exception as exc:  # one broken case never stops the others or the summary
            failures += 1
            _say(f"FAIL {name}: {type(exc).__name__}: {exc}")
            continue
        if result.ok:
            passed += 1
            _say(f"ok   {result.name}")
        else:
            failures += 1
            _say(f"FAIL {result.name}: {result.message}")
    return failures, passed


def cmd_mappings_new(args: argparse.Namespace) -> int:
    """Write a skeleton provider folder from one sample payload."""
    import re

    from bspgate.mapping.skeleton import skeleton_files

    name = args.name
    if not re.fullmatch(NAME_PATTERN, name):
        sys.stderr.write(f"bspgate: {name!r}: a provider name is lower-case letters, digits, _\n")
        return 2
    root = _new_root(args)
    folder = root / name
    if _inside_package(root):
        sys.stderr.write(
            f"bspgate: {root.resolve()} is inside the installed bspgate package; give the "
            "folder to write into with --mappings DIR\n"
        )
        return 2
    if folder.exists():
        sys.stderr.write(f"bspgate: {folder} exists; choose another name\n")
        return 2
    try:
        payload = orjson.loads(Path(args.source).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        sys.stderr.write(f"bspgate: {args.source}: not a readable JSON file ({exc})\n")
        return 2
    files = skeleton_files(name, payload)
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        _say(f"wrote {_shown(path)}")
    # `test` finds the folder by itself only when the config (or the checkout) names it
    found = {p.resolve() for p in _roots(argparse.Namespace(**{**vars(args), "mappings": None}))}
    option = "" if root.resolve() in found else f" --mappings {_shown(root)}"
    _say(
        f"next: edit {_shown(folder / 'mapping.yaml')} (the TODO lines), then "
        f"`bspgate mappings test {name}{option} --update` and review the case it writes"
    )
    return 0


def add_mappings_parsers(mappings_sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `mappings check|test|new` on the `mappings` subcommand."""
    check = mappings_sub.add_parser(
        "check",
        parents=[common],
        help="validate every mapping file, send form and case file",
    )
    check.add_argument("--mappings", help="mappings folder (default: the config's)")
    check.set_defaults(func=cmd_mappings)
    test = mappings_sub.add_parser("test", parents=[common], help="run the golden cases")
    test.add_argument("provider", nargs="?", help="one mapping name (default: every mapping)")
    test.add_argument("--mappings", help="mappings folder (default: the config's)")
    test.add_argument(
        "--update",
        action="store_true",
        help="write the actual output into each case's expect first (review the diff)",
    )
    test.set_defaults(func=cmd_mappings)
    new = mappings_sub.add_parser(
        "new", parents=[common], help="write a skeleton provider folder from a sample payload"
    )
    new.add_argument("name", help="provider id (the folder name)")
    new.add_argument("--from", dest="source", required=True, help="a sample webhook payload (JSON)")
    new.add_argument(
        "--mappings",
        help="the folder to write into (default: the config's `mappings:` folder, else ./mappings)",
    )
    new.set_defaults(func=cmd_mappings_new)


__all__ = ["add_mappings_parsers", "cmd_mappings", "cmd_mappings_new"]
