"""The `kohya` section in the report: its schema check, its table and the targets it decides
(issue 26: per step <= 0.9x kohya's in fp32 and in bf16, whole run <= 0.8x, peak RSS <= 0.7x)."""
from __future__ import annotations

from library.diagnostics.benchmark.report_format import SchemaError, check_sides, comparison_cells, fmt_stat, get_path, target_check

TARGETS = {"kohya_step_ratio_max": 0.9, "kohya_whole_run_ratio_max": 0.8, "kohya_peak_rss_ratio_max": 0.7}
SIDE_STATS = ("step_seconds_in_run", "step_seconds_short_long", "whole_run_seconds", "first_step_after_start_seconds",
              "peak_rss_bytes", "peak_anonymous_bytes")
RATIOS = ("step_ratio", "whole_run_ratio", "peak_rss_ratio", "peak_anonymous_ratio")


def validate_kohya(section: dict) -> None:
    def get(path: str):
        return get_path({"kohya": section}, f"kohya.{path}")

    if not get("precisions"):
        raise SchemaError("kohya.precisions: nothing measured")
    for precision in section["precisions"]:
        check_sides({"kohya": section}, f"kohya.precisions.{precision}", ("kohya", "ours"), SIDE_STATS,
                    "modules", RATIOS)


def kohya_checks(section: dict) -> dict:
    checks = {}
    for precision, r in section.get("precisions", {}).items():
        for name, key in (("step", "step_ratio"), ("whole_run", "whole_run_ratio"), ("peak_rss", "peak_rss_ratio")):
            checks[f"kohya_{name}_ratio_{precision}"] = target_check(r[key]["median"], TARGETS[f"kohya_{name}_ratio_max"])
    return checks


def kohya_lines(section: dict) -> list[str]:
    lines = ["", f"| vs kohya's sdxl_train_network.py: real SDXL, {section['resolution']} px, rank {section['rank']} "
             "| kohya s/step | ours s/step | ours / kohya | kohya whole run | ours whole run | ours / kohya "
             "| kohya peak RSS | ours peak RSS | ours / kohya | anonymous ours / kohya | modules kohya / ours | loss falls kohya / ours |",
             "|" + "---|" * 13]
    for precision, r in section["precisions"].items():
        k, o = r["kohya"], r["ours"]
        lines.append(f"| {precision} ({section['steps']['short']} / {section['steps']['long']} steps, {section['repeats']} pairs) "
                     + comparison_cells(k, o, r, "step_seconds_in_run", 2, 0) + f" {fmt_stat(r['peak_anonymous_ratio'])} "
                     f"| {k['modules']} / {o['modules']} | {sum(k['loss_falls'])}/{len(k['loss_falls'])} / "
                     f"{sum(o['loss_falls'])}/{len(o['loss_falls'])} |")
    return lines
