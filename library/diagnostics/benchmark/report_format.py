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


def check_sides(report: dict, where: str, sides: tuple[str, ...], stats: tuple[str, ...], modules_key: str, ratios: tuple[str, ...]) -> None:
    """A peer comparison's entry at `where` in `report`: each side's statistics and integer module count, and the ratios."""

    def get(path: str):
        return get_path(report, path)

    for side in sides:
        for key in stats:
            check_stat(get(f"{where}.{side}.{key}"), f"{where}.{side}.{key}")
        if not isinstance(get(f"{where}.{side}.{modules_key}"), int):
            raise SchemaError(f"{where}.{side}.{modules_key}: not an integer")
    for key in ratios:
        check_stat(get(f"{where}.{key}"), f"{where}.{key}")


def target_check(value, limit) -> dict:
    """A ratio against its upper limit (met None: not measured)."""
    return {"value": value, "limit": limit, "met": None if value is None else value <= limit}


def comparison_cells(theirs: dict, ours: dict, ratios: dict, step_key: str, step_digits: int, run_digits: int) -> str:
    """'| theirs | ours | ratio |' for the step time, the whole run and the peak RSS of a peer comparison."""
    cells = []
    for key, ratio, scale, unit, digits in ((step_key, "step_ratio", 1.0, "", step_digits),
                                            ("whole_run_seconds", "whole_run_ratio", 1.0, " s", run_digits),
                                            ("peak_rss_bytes", "peak_rss_ratio", MIB, " MiB", 0)):
        cells += [fmt_stat(theirs[key], scale, unit, digits), fmt_stat(ours[key], scale, unit, digits), fmt_stat(ratios[ratio])]
    return "| " + " | ".join(cells) + " |"


def fmt_stat(stat: dict, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    if not stat or stat.get("median") is None:
        return "n/a"
    spread = f" ±{stat['spread'] * 50:.0f}%" if stat.get("spread") is not None and stat["n"] > 1 else ""
    return f"{stat['median'] / scale:,.{digits}f}{unit}{spread}"
