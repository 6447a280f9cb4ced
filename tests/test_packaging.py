"""What a non-editable install ships: every file the packages hold beside their Python modules (the embedded model,
the device scripts) is named by pyproject's package data, so an installed copy is not missing one."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


def _package_data() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-data"]


def _shipped(relative: Path, patterns: list[str]) -> bool:
    # setuptools' globs: "**" spans folders, "*" stays within one
    text = relative.as_posix()
    return any(fnmatch.fnmatch(text, p) and (p.count("/") == text.count("/") or "**" in p) for p in patterns)


def test_every_data_file_of_a_package_is_in_its_package_data():
    data = _package_data()
    missing = []
    for package in ("engine", "bridge", "reaper_scripts"):
        for path in sorted((ROOT / package).rglob("*")):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT / package)
            if not _shipped(relative, data.get(package, [])):
                missing.append(f"{package}/{relative.as_posix()}")
    assert not missing, f"left out of the wheel (pyproject's package-data): {missing}"


def test_package_data_names_no_pattern_that_matches_nothing():
    stale = [
        f"{package}: {pattern}"
        for package, patterns in _package_data().items()
        for pattern in patterns
        if not pattern.endswith(".py")
        and not any(
            _shipped(p.relative_to(ROOT / package), [pattern]) for p in (ROOT / package).rglob("*") if p.is_file()
        )
    ]
    assert not stale, f"package data that matches no file: {stale}"


def test_the_engine_never_imports_the_bridge():
    """The layers: bridge (server, client, CLI) and reaper_scripts build on the engine, never the other way, so the
    engine installs and runs without them. Read from the sources, every import statement (at any indentation)."""
    import ast

    leaks = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            leaks += [
                f"{path.relative_to(ROOT)}: {name}"
                for name in names
                if name.split(".")[0] in ("bridge", "reaper_scripts")
            ]
    assert leaks == []
