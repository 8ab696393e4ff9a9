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


LEARNING_FIGURES = ["concept_rate.w0", "concept_rate.w1", "base_accuracy.w0.mean", "base_accuracy.w0.min",
                    "base_accuracy.w1.mean", "base_accuracy.w1.min", "train_seconds", "steps"]


def _validate_learning(learning: dict) -> None:
    if not _get(learning, "algorithms"):
        raise SchemaError("learning.algorithms: no network measured")
    for name, result in learning["algorithms"].items():
        for path in LEARNING_FIGURES:
            try:
                value = _get(result, path)
            except SchemaError:
                raise SchemaError(f"learning.algorithms.{name}.{path}: missing") from None
            if not isinstance(value, (int, float)):
                raise SchemaError(f"learning.algorithms.{name}.{path}: not a number")
        if "steps_to_target" not in result or not isinstance(result.get("curve"), list):
            raise SchemaError(f"learning.algorithms.{name}: no learning curve")


def validate_report(report: dict) -> None:
    """Raise SchemaError unless the report holds every figure the performance issue asks for (and,
    when the learning section was measured, every figure of the toy-world issue)."""
    for key in ("schema_version", "environment", "targets", "fp8", "target_checks"):
        _get(report, key)
    if "learning" in report:
        _validate_learning(report["learning"])
        if not any(key in report for key in ("training", "startup", "memory_estimate", "preparation")):
            return  # a learning-only report (tools/bench.py --sections learning)
    for key in ("training", "startup", "memory_estimate", "preparation"):
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


def format_learning_table(learning: dict) -> str:
    """One row per network: what it learned (concept rate) and what it kept (base accuracy)."""
    lines = ["| network | steps | train time | concept w0 | concept w1 | base w0 mean (min) | base w1 mean (min) "
             "| steps to concept >= 0.8 |", "|" + "---|" * 8]
    for name, r in learning["algorithms"].items():
        c, b = r["concept_rate"], r["base_accuracy"]
        reached = r["steps_to_target"] if r["steps_to_target"] is not None else "not reached"
        w0 = f"{c['w0']:.2f}" if "w0_without_embedding" not in c else f"{c['w0_without_embedding']:.2f} ({c['w0']:.2f} with the embedding)"
        lines.append(f"| {name} | {r['steps']} | {r['train_seconds']:.0f} s | {w0} | {c['w1']:.2f} "
                     f"| {b['w0']['mean']:.2f} ({b['w0']['min']:.2f}) | {b['w1']['mean']:.2f} ({b['w1']['min']:.2f}) | {reached} |")
    return "\n".join(lines)


def format_table(report: dict) -> str:
    """Readable Markdown tables (medians; ±half the relative min-max spread over repeats)."""
    if "training" not in report:  # a learning-only report
        return format_learning_table(report["learning"]) + _format_checks(report)
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
    s, p = report["startup"], report["preparation"]
    c, idx = p["latent_caching"], p["indexing"]
    lines += ["", "| measurement | value |", "|---|---|",
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
    for size, calibration in report["memory_estimate"].items():
        lines += ["", f"| --estimate_memory on {size}: res | batch | checkpointing | estimated | measured (tensor bytes) | ratio |",
                  "|---|---|---|---|---|---|"]
        for case in calibration["cases"]:
            lines.append(f"| {case['resolution']} | {case['batch_size']} | {case['gradient_checkpointing']} "
                         f"| {case['estimated_bytes'] / MIB:,.1f} MiB | {case['measured_bytes'] / MIB:,.1f} MiB | {case['ratio']:.3f} |")
    if "learning" in report:
        lines += ["", format_learning_table(report["learning"])]
    return "\n".join(lines) + _format_checks(report)


def _format_checks(report: dict) -> str:
    lines = ["", "| target | measured | limit | met |", "|---|---|---|---|"]
    for name, check in report.get("target_checks", {}).items():
        if isinstance(check, dict):
            value = check["value"]
            shown = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"| {name} | {shown} | {check['limit']} | {check['met']} |")
    return "\n".join(lines)
