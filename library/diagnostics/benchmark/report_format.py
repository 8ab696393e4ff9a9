"""The benchmark report's building blocks, shared by the report and its sections (peer, kohya,
hardware): statistics checked against the schema, figures formatted for the tables."""
from __future__ import annotations

MIB = 1024 * 1024
STAT_KEYS = {"median", "min", "max", "spread", "n"}


class SchemaError(ValueError):
    pass


def check_stat(value, where: str) -> None:
    if not isinstance(value, dict) or set(value) != STAT_KEYS:
        raise SchemaError(f"{where}: expected a statistic with {sorted(STAT_KEYS)}, got {value!r}")
    if value["n"] < 1 or not isinstance(value["median"], (int, float)):
        raise SchemaError(f"{where}: no measurement")


def get_path(report: dict, path: str):
    node = report
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"missing {path}")
        node = node[part]
    return node


def fmt_stat(stat: dict, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    if not stat or stat.get("median") is None:
        return "n/a"
    spread = f" ±{stat['spread'] * 50:.0f}%" if stat.get("spread") is not None and stat["n"] > 1 else ""
    return f"{stat['median'] / scale:,.{digits}f}{unit}{spread}"
