"""The benchmark report: its schema check and the readable table."""
from __future__ import annotations

MIB = 1024 * 1024
STAT_KEYS = {"median", "min", "max", "spread", "n"}


class SchemaError(ValueError):
    pass


def _stat(value, where: str) -> None:
    if not isinstance(value, dict) or set(value) != STAT_KEYS:
        raise SchemaError(f"{where}: expected a statistic with {sorted(STAT_KEYS)}, got {value!r}")
    if value["n"] < 1 or not isinstance(value["median"], (int, float)):
        raise SchemaError(f"{where}: no measurement")


def _get(report: dict, path: str):
    node = report
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise SchemaError(f"missing {path}")
        node = node[part]
    return node


TRAINING_STATS = [
    "ours.step_seconds", "ours.steps_per_second", "ours.peak_rss_training_bytes", "ours.peak_rss_process_bytes",
    "ours.start_to_first_step_seconds", "reference.step_seconds", "reference.steps_per_second",
    "reference.peak_rss_training_bytes", "step_time_ratio", "peak_memory_ratio",
    "gradient_checkpointing.peak_rss_training_bytes.off", "gradient_checkpointing.peak_rss_training_bytes.on",
    "gradient_checkpointing.reduction", "gradient_checkpointing.training_increase_bytes.on",
    "text_encoder_caching.peak_rss_training_bytes.cached", "text_encoder_caching.peak_rss_training_bytes.not_cached",
]
OTHER_STATS = [
    "startup.start_to_first_step_seconds", "startup.import_seconds", "startup.ratio",
    "preparation.latent_caching.raw_encode_images_per_s", "preparation.latent_caching.caching_images_per_s",
    "preparation.latent_caching.ratio", "preparation.tagging.images_per_s",
]


def validate_report(report: dict) -> None:
    """Raise SchemaError unless the report holds every figure the performance issue asks for."""
    for key in ("schema_version", "environment", "targets", "training", "startup", "memory_estimate", "preparation", "fp8",
                "target_checks"):
        _get(report, key)
    if not report["training"]:
        raise SchemaError("training: no model size measured")
    for size, result in report["training"].items():
        for path in TRAINING_STATS:
            _stat(_get(result, path), f"training.{size}.{path}")
        flags = _get(result, "text_encoder_caching.text_encoders_resident_while_training")
        if set(flags) != {"cached", "not_cached"} or not all(isinstance(v, bool) for v in flags.values()):
            raise SchemaError(f"training.{size}.text_encoder_caching.text_encoders_resident_while_training: {flags!r}")
    for path in OTHER_STATS:
        _stat(_get(report, path), path)
    for name in ("quarter", "all"):
        for key in ("images", "total_seconds", "index_python_peak_bytes"):
            if not isinstance(_get(report, f"preparation.indexing.{name}.{key}"), (int, float)):
                raise SchemaError(f"preparation.indexing.{name}.{key}: not a number")
    for size, calibration in report["memory_estimate"].items():
        for case in _get(calibration, "cases"):
            for key in ("estimated_bytes", "measured_bytes", "ratio", "resolution", "batch_size", "gradient_checkpointing"):
                if key not in case:
                    raise SchemaError(f"memory_estimate.{size}: a case has no {key}")
    if not isinstance(_get(report, "fp8.supported"), bool):
        raise SchemaError("fp8.supported: not a boolean")


def _fmt_stat(stat: dict, scale: float = 1.0, unit: str = "", digits: int = 2) -> str:
    if not stat or stat.get("median") is None:
        return "n/a"
    spread = f" ±{stat['spread'] * 50:.0f}%" if stat.get("spread") is not None and stat["n"] > 1 else ""
    return f"{stat['median'] / scale:,.{digits}f}{unit}{spread}"


def format_table(report: dict) -> str:
    """Readable Markdown tables (medians; ±half the relative min-max spread over repeats)."""
    lines = []
    if report.get("training"):
        lines += _training_lines(report)
    if report.get("startup") and report.get("preparation"):
        lines += _other_lines(report)
    lines += _calibration_and_hardware_lines(report)
    return "\n".join(lines).strip("\n")


def _training_lines(report: dict) -> list[str]:
    lines = ["| model | res | batch | rank | ours s/step | reference s/step | time ratio | ours peak RSS | reference peak RSS "
             "| memory ratio | start to 1st step |", "|" + "---|" * 11]
    for size, r in report["training"].items():
        lines.append(f"| {size} | {r['resolution']} | {r['batch_size']} | {r['rank']} | {_fmt_stat(r['ours']['step_seconds'], digits=3)} "
                     f"| {_fmt_stat(r['reference']['step_seconds'], digits=3)} | {_fmt_stat(r['step_time_ratio'], digits=3)} "
                     f"| {_fmt_stat(r['ours']['peak_rss_training_bytes'], MIB, ' MiB', 0)} "
                     f"| {_fmt_stat(r['reference']['peak_rss_training_bytes'], MIB, ' MiB', 0)} "
                     f"| {_fmt_stat(r['peak_memory_ratio'], digits=3)} | {_fmt_stat(r['ours']['start_to_first_step_seconds'], unit=' s', digits=1)} |")
    lines += ["", "| model | checkpointing off | on | reduction | reduction of the training-phase increase | TE outputs cached "
              "| not cached | TEs resident when cached |", "|" + "---|" * 8]
    for size, r in report["training"].items():
        g, t = r["gradient_checkpointing"], r["text_encoder_caching"]
        lines.append(f"| {size} | {_fmt_stat(g['peak_rss_training_bytes']['off'], MIB, ' MiB', 0)} "
                     f"| {_fmt_stat(g['peak_rss_training_bytes']['on'], MIB, ' MiB', 0)} | {_fmt_stat(g['reduction'], 0.01, '%', 0)} "
                     f"| {_fmt_stat(g['reduction_of_training_increase'], 0.01, '%', 0)} "
                     f"| {_fmt_stat(t['peak_rss_training_bytes']['cached'], MIB, ' MiB', 0)} "
                     f"| {_fmt_stat(t['peak_rss_training_bytes']['not_cached'], MIB, ' MiB', 0)} "
                     f"| {t['text_encoders_resident_while_training']['cached']} |")
    return lines


def _other_lines(report: dict) -> list[str]:
    s, p = report["startup"], report["preparation"]
    c, idx = p["latent_caching"], p["indexing"]
    lines = ["", "| measurement | value |", "|---|---|",
              f"| tiny: process start to first optimizer step | {_fmt_stat(s['start_to_first_step_seconds'], unit=' s')} |",
              f"| tiny: importing the modules that run loads | {_fmt_stat(s['import_seconds'], unit=' s')} |",
              f"| startup ratio | {_fmt_stat(s['ratio'])} |",
              f"| latent caching ({c['model']}, {c['resolution']} px, batch {c['batch_size']}) | {_fmt_stat(c['caching_images_per_s'], unit=' img/s')} |",
              f"| raw VAE encode, same pixels | {_fmt_stat(c['raw_encode_images_per_s'], unit=' img/s')} |",
              f"| caching / raw ratio | {_fmt_stat(c['ratio'])} |",
              f"| tagging ({p['tagging']['model']}) | {_fmt_stat(p['tagging']['images_per_s'], unit=' img/s', digits=1)} |",
              f"| indexing {idx['all']['images']:,} images: merge metadata + dataset index | {idx['all']['merge_seconds']:.1f} s + "
              f"{idx['all']['index_seconds']:.1f} s = {idx['all']['total_seconds']:.1f} s |",
              f"| indexing Python heap peak per image ({idx['quarter']['images']:,} / {idx['all']['images']:,} images) | "
              f"{report['preparation']['indexing']['python_peak_per_image_bytes']['quarter']:,.0f} B / "
              f"{report['preparation']['indexing']['python_peak_per_image_bytes']['all']:,.0f} B |",
              f"| fp8 base storage | {'supported' if report['fp8']['supported'] else 'unsupported: ' + report['fp8']['reason']} |"]
    return lines


def _calibration_and_hardware_lines(report: dict) -> list[str]:
    lines = []
    for size, calibration in report.get("memory_estimate", {}).items():
        lines += ["", f"| --estimate_memory on {size}: res | batch | checkpointing | estimated | measured (tensor bytes) | ratio |",
                  "|---|---|---|---|---|---|"]
        for case in calibration["cases"]:
            lines.append(f"| {case['resolution']} | {case['batch_size']} | {case['gradient_checkpointing']} "
                         f"| {case['estimated_bytes'] / MIB:,.1f} MiB | {case['measured_bytes'] / MIB:,.1f} MiB | {case['ratio']:.3f} |")
    if report.get("hardware"):
        from library.benchmark.hardware import format_hardware

        lines += format_hardware(report["hardware"])
    checks = report.get("target_checks", {})
    if checks:
        lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for name, check in checks.items():
        if isinstance(check, dict):
            value = check["value"]
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {name} | {shown} | {check['limit']} | {check['met']} |")
    return lines
