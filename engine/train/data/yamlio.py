"""The small YAML subset Slakh's metadata.yaml uses: nested mappings of scalars.

Reading uses PyYAML when it is installed and falls back to a parser of that subset; writing is by hand, with
strings quoted JSON-style (valid YAML), so that the files read the same with or without PyYAML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?)$")


def _scalar(text: str) -> Any:
    text = text.strip()
    if text == "" or text in ("~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "yes", "Yes"):
        return True
    if text in ("false", "False", "FALSE", "no", "No"):
        return False
    if text[0] == '"':
        return json.loads(text)
    if text[0] == "'" and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if _NUMBER.match(text) or text.lower() in (".nan", ".inf", "-.inf"):
        return float(text.replace(".nan", "nan").replace(".inf", "inf"))
    return text


def parse_simple_yaml(text: str) -> dict[str, Any]:
    """Parse block mappings of scalars (no lists, no flow style, no multi-line strings)."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith('"') else raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#") or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, rest = line.strip().partition(":")
        if not sep:
            raise ValueError(f"line {number}: expected 'key: value'")
        key = str(_scalar(key))
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if rest.strip() == "":
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
        else:
            parent[key] = _scalar(rest)
    return root


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a metadata.yaml into nested dicts (PyYAML if installed, else the subset parser)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:
        return parse_simple_yaml(text)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("not a mapping")
    return data


def _format_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(float(value))
    return json.dumps(str(value), ensure_ascii=False)


def dump_yaml(data: dict[str, Any], indent: int = 0) -> str:
    """Nested mappings of scalars as block YAML; keys keep their order."""
    lines: list[str] = []
    pad = " " * indent
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(dump_yaml(value, indent + 2).rstrip("\n"))
        else:
            lines.append(f"{pad}{key}: {_format_scalar(value)}")
    return "\n".join(line for line in lines if line) + "\n"
