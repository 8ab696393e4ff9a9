"""The `peer` section in the report: its schema check, its tables and the issue-17 targets it decides."""
from __future__ import annotations

from library.diagnostics.benchmark.report_format import SchemaError, check_sides, comparison_cells, fmt_stat, get_path, target_check

TARGETS = {"peer_whole_run_ratio_max": 0.8, "peer_small_step_ratio_max": 0.85}
PHASES = ("start_up", "text_encoding", "latent_caching", "other_setup", "training", "save", "exit")
PHASE_LABELS = {"start_up": "process start to first model call (imports, loading)", "text_encoding": "text encoding",
                "latent_caching": "latent caching (VAE encode)", "other_setup": "other set-up before the first UNet call",
                "training": "training (first UNet call to last step)", "save": "last step to LoRA file written",
                "exit": "LoRA written to process end"}
SIDE_STATS = ("step_seconds", "whole_run_seconds", "start_to_saved_lora_seconds", "peak_rss_bytes")
RATIOS = ("step_ratio", "whole_run_ratio", "start_to_saved_lora_ratio", "peak_rss_ratio")


def validate_peer(peer: dict) -> None:
    def get(path: str):  # errors name the full path from the report's top
        return get_path({"peer": peer}, f"peer.{path}")

    if not get("sizes"):
        raise SchemaError("peer.sizes: no model size measured")
    for size, result in peer["sizes"].items():
        for key in ("resolution", "batch_size", "rank", "steps.short", "steps.long"):
            if not isinstance(get(f"sizes.{size}.{key}"), int):
                raise SchemaError(f"peer.sizes.{size}.{key}: not an integer")
        if result["steps"]["long"] <= result["steps"]["short"]:
            raise SchemaError(f"peer.sizes.{size}.steps: the long run must have more steps than the short one")
        check_sides({"peer": peer}, f"peer.sizes.{size}", ("peer", "ours"), SIDE_STATS, "lora.modules",
                    RATIOS)


def peer_checks(peer: dict) -> dict:
    """Whole run (tiny, process start to saved LoRA) <= 0.8x the script; `small` step <= 0.85x."""
    sizes = peer.get("sizes", {})
    checks = {}
    if "tiny" in sizes:
        checks["peer_whole_run_ratio_tiny"] = target_check(sizes["tiny"]["whole_run_ratio"]["median"], TARGETS["peer_whole_run_ratio_max"])
    if "small" in sizes:
        checks["peer_step_ratio_small"] = target_check(sizes["small"]["step_ratio"]["median"], TARGETS["peer_small_step_ratio_max"])
    return checks


def peer_lines(peer: dict) -> list[str]:
    lines = ["", "| vs diffusers' script: model, res | steps short / long | script s/step | ours s/step | ours / script "
             "| script whole run | ours whole run | ours / script | script peak RSS | ours peak RSS | ours / script "
             "| LoRA modules script / ours |", "|" + "---|" * 12]
    for size, r in peer["sizes"].items():
        p, o = r["peer"], r["ours"]
        lines.append(f"| {size}, {r['resolution']} px | {r['steps']['short']} / {r['steps']['long']} "
                     + comparison_cells(p, o, r, "step_seconds", 3, 1) + f" {p['lora']['modules']} / {o['lora']['modules']} |")
    header = "| where the long run's time goes (median s) |"
    rule = "|---|"
    for size in peer["sizes"]:
        header += f" script, {size} | ours, {size} |"
        rule += "---|---|"
    lines += ["", header, rule]
    for phase in PHASES + ("total",):
        row = f"| {PHASE_LABELS.get(phase, 'whole run (wall, from the parent)')} |"
        for r in peer["sizes"].values():
            for side in ("peer", "ours"):
                stat = r[side]["whole_run_seconds"] if phase == "total" else r[side]["phases_seconds"].get(phase)
                row += f" {fmt_stat(stat, digits=2)} |"
        lines.append(row)
    row = "| process start to LoRA file written (ours / script per pair: "
    row += ", ".join(f"{size} {fmt_stat(r['start_to_saved_lora_ratio'])}" for size, r in peer["sizes"].items()) + ") |"
    for r in peer["sizes"].values():
        for side in ("peer", "ours"):
            row += f" {fmt_stat(r[side]['start_to_saved_lora_seconds'], digits=2)} |"
    lines.append(row)
    row = "| step interval inside the run (median) |"
    for r in peer["sizes"].values():
        for side in ("peer", "ours"):
            row += f" {fmt_stat(r[side]['step_interval_in_run_seconds'], digits=3)} |"
    lines.append(row)
    return lines
