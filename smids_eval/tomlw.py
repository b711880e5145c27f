"""Write the resolved settings of a run as TOML (tables of scalars and lists only)."""

from __future__ import annotations

import json


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if v is None:
        return '""'
    return json.dumps(str(v))


def dumps(data: dict) -> str:
    """Top-level scalars first, then one ``[table]`` per nested dict (nested once more as a.b)."""
    lines = [f"{k} = {_value(v)}" for k, v in data.items() if not isinstance(v, dict)]

    def table(prefix: str, body: dict) -> None:
        lines.append(f"\n[{prefix}]")
        lines.extend(f"{json.dumps(k) if '.' in k else k} = {_value(v)}"
                     for k, v in body.items() if not isinstance(v, dict))
        for k, v in body.items():
            if isinstance(v, dict):
                table(f"{prefix}.{json.dumps(k) if '.' in k else k}", v)

    for k, v in data.items():
        if isinstance(v, dict):
            table(k, v)
    return "\n".join(lines) + "\n"
