"""The benchmark report: its schema check and the readable table."""
from __future__ import annotations

from library.diagnostics.benchmark.report_format import MIB, SchemaError, check_stat, fmt_stat, get_path

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
    "preparation.text_encoder_caching.distinct_captions.one_per_forward_images_per_s",
    "preparation.text_encoder_caching.distinct_captions.batched_images_per_s",
    "preparation.text_encoder_caching.dreambooth_captions.one_per_forward_images_per_s",
    "preparation.text_encoder_caching.dreambooth_captions.batched_images_per_s",
]


LEARNING_FIGURES = ["concept_rate.w0", "concept_rate.w1", "base_accuracy.w0.mean", "base_accuracy.w0.min",
                    "base_accuracy.w1.mean", "base_accuracy.w1.min", "train_seconds", "steps"]


def _validate_learning(learning: dict) -> None:
    if not get_path(learning, "algorithms"):
        raise SchemaError("learning.algorithms: no network measured")
    for name, result in learning["algorithms"].items():
        for path in LEARNING_FIGURES:
            try:
                value = get_path(result, path)
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
        get_path(report, key)
    if "learning" in report:
        _validate_learning(report["learning"])
    if "peer" in report:
        from library.diagnostics.benchmark.peers.peer_report import validate_peer

        validate_peer(report["peer"])
    if "kohya" in report:
        from library.diagnostics.benchmark.peers.kohya_report import validate_kohya

        validate_kohya(report["kohya"])
    if any(name in report for name in ("learning", "peer", "kohya")) and not any(
            report.get(key) for key in ("training", "startup", "memory_estimate", "preparation")):
        return  # an opt-in-only report (tools/bench.py --sections learning / peer / kohya)
    for key in ("training", "startup", "memory_estimate", "preparation"):
        get_path(report, key)
    if not report["training"]:
        raise SchemaError("training: no model size measured")
    for size, result in report["training"].items():
        for path in TRAINING_STATS:
            check_stat(get_path(result, path), f"training.{size}.{path}")
        flags = get_path(result, "text_encoder_caching.text_encoders_resident_while_training")
        if set(flags) != {"cached", "not_cached"} or not all(isinstance(v, bool) for v in flags.values()):
            raise SchemaError(f"training.{size}.text_encoder_caching.text_encoders_resident_while_training: {flags!r}")
    for path in OTHER_STATS:
        check_stat(get_path(report, path), path)
    for name in ("quarter", "all"):
        for key in ("images", "total_seconds", "index_python_peak_bytes"):
            if not isinstance(get_path(report, f"preparation.indexing.{name}.{key}"), (int, float)):
                raise SchemaError(f"preparation.indexing.{name}.{key}: not a number")
    for size, calibration in report["memory_estimate"].items():
        for case in get_path(calibration, "cases"):
            for key in ("estimated_bytes", "measured_bytes", "ratio", "resolution", "batch_size", "gradient_checkpointing"):
                if key not in case:
                    raise SchemaError(f"memory_estimate.{size}: a case has no {key}")
    if not isinstance(get_path(report, "fp8.supported"), bool):
        raise SchemaError("fp8.supported: not a boolean")


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
    lines = []
    if report.get("training"):
        lines += _training_lines(report)
    if report.get("startup") and report.get("preparation"):
        lines += _other_lines(report)
    if report.get("learning"):
        lines += ["", format_learning_table(report["learning"])]
    if report.get("peer"):
        from library.diagnostics.benchmark.peers.peer_report import peer_lines

        lines += peer_lines(report["peer"])
    if report.get("kohya"):
        from library.diagnostics.benchmark.peers.kohya_report import kohya_lines

        lines += kohya_lines(report["kohya"])
    lines += _calibration_and_hardware_lines(report)
    return "\n".join(lines).strip("\n")


def _training_lines(report: dict) -> list[str]:
    lines = ["| model | res | batch | rank | ours s/step | reference s/step | time ratio | ours peak RSS | reference peak RSS "
             "| memory ratio | start to 1st step |", "|" + "---|" * 11]
    for size, r in report["training"].items():
        lines.append(f"| {size} | {r['resolution']} | {r['batch_size']} | {r['rank']} | {fmt_stat(r['ours']['step_seconds'], digits=3)} "
                     f"| {fmt_stat(r['reference']['step_seconds'], digits=3)} | {fmt_stat(r['step_time_ratio'], digits=3)} "
                     f"| {fmt_stat(r['ours']['peak_rss_training_bytes'], MIB, ' MiB', 0)} "
                     f"| {fmt_stat(r['reference']['peak_rss_training_bytes'], MIB, ' MiB', 0)} "
                     f"| {fmt_stat(r['peak_memory_ratio'], digits=3)} | {fmt_stat(r['ours']['start_to_first_step_seconds'], unit=' s', digits=1)} |")
    lines += ["", "| model | checkpointing off | on | reduction | reduction of the training-phase increase | TE outputs cached "
              "| not cached | TEs resident when cached |", "|" + "---|" * 8]
    for size, r in report["training"].items():
        g, t = r["gradient_checkpointing"], r["text_encoder_caching"]
        lines.append(f"| {size} | {fmt_stat(g['peak_rss_training_bytes']['off'], MIB, ' MiB', 0)} "
                     f"| {fmt_stat(g['peak_rss_training_bytes']['on'], MIB, ' MiB', 0)} | {fmt_stat(g['reduction'], 0.01, '%', 0)} "
                     f"| {fmt_stat(g['reduction_of_training_increase'], 0.01, '%', 0)} "
                     f"| {fmt_stat(t['peak_rss_training_bytes']['cached'], MIB, ' MiB', 0)} "
                     f"| {fmt_stat(t['peak_rss_training_bytes']['not_cached'], MIB, ' MiB', 0)} "
                     f"| {t['text_encoders_resident_while_training']['cached']} |")
    return lines


def _other_lines(report: dict) -> list[str]:
    s, p = report["startup"], report["preparation"]
    c, idx = p["latent_caching"], p["indexing"]
    lines = ["", "| measurement | value |", "|---|---|",
              f"| tiny: process start to first optimizer step | {fmt_stat(s['start_to_first_step_seconds'], unit=' s')} |",
              f"| tiny: importing the modules that run loads | {fmt_stat(s['import_seconds'], unit=' s')} |",
              f"| startup ratio | {fmt_stat(s['ratio'])} |",
              f"| latent caching ({c['model']}, {c['resolution']} px, batch {c['batch_size']}) | {fmt_stat(c['caching_images_per_s'], unit=' img/s')} |",
              f"| raw VAE encode, same pixels | {fmt_stat(c['raw_encode_images_per_s'], unit=' img/s')} |",
              f"| caching / raw ratio | {fmt_stat(c['ratio'])} |",
              *_text_caching_lines(p.get("text_encoder_caching")),
              f"| tagging ({p['tagging']['model']}) | {fmt_stat(p['tagging']['images_per_s'], unit=' img/s', digits=1)} |",
              f"| indexing {idx['all']['images']:,} images: merge metadata + dataset index | {idx['all']['merge_seconds']:.1f} s + "
              f"{idx['all']['index_seconds']:.1f} s = {idx['all']['total_seconds']:.1f} s |",
              f"| indexing Python heap peak per image ({idx['quarter']['images']:,} / {idx['all']['images']:,} images) | "
              f"{report['preparation']['indexing']['python_peak_per_image_bytes']['quarter']:,.0f} B / "
              f"{report['preparation']['indexing']['python_peak_per_image_bytes']['all']:,.0f} B |",
              f"| fp8 base storage | {'supported' if report['fp8']['supported'] else 'unsupported: ' + report['fp8']['reason']} |"]
    return lines


def _text_caching_lines(t: dict | None) -> list[str]:
    if not t:
        return []
    lines = []
    for name, label in (("distinct_captions", "every caption distinct"), ("dreambooth_captions", "DreamBooth captions")):
        case = t[name]
        lines.append(f"| text-encoder caching ({t['size']} encoders, {t['dtype']}, {t['images']} images, {label}: "
                     f"{case['distinct']} distinct): one per forward -> batches of {t['batch_size']} | "
                     f"{fmt_stat(case['one_per_forward_images_per_s'], unit=' img/s', digits=1)} -> "
                     f"{fmt_stat(case['batched_images_per_s'], unit=' img/s', digits=1)} |")
    return lines


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / MIB:,.1f} MiB"


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def efficiency_lines(result: dict) -> list[str]:
    lines = ["", f"| {result['model']}, {result['resolution']} px, batch {result['batch_size']}, rank {result['rank']}, fp32: threads "
             "| UNet fwd+bwd GFLOP per step | fp32 GEMM rate | our step | achieved | efficiency | compute limit | step / limit |",
             "|" + "---|" * 8]
    for threads in (1, 2):
        r = result.get(f"threads_{threads}")
        if not r:
            continue
        lines.append(f"| {threads} | {r['flops_per_step'] / 1e9:,.1f} | {fmt_stat(r['gemm_flops_per_second'], 1e9, ' GFLOP/s', 0)} "
                     f"| {fmt_stat(r['step_seconds'], unit=' s', digits=3)} | {fmt_stat(r['achieved_flops_per_second'], 1e9, ' GFLOP/s', 0)} "
                     f"| {fmt_stat(r['efficiency'], 0.01, '%', 0)} | {fmt_stat(r['compute_limit_seconds'], unit=' s', digits=3)} "
                     f"| {fmt_stat(r['step_over_limit'])} |")
    if result.get("two_over_one_thread_step"):
        lines.append(f"| 2 / 1 threads, step time | | | {fmt_stat(result['two_over_one_thread_step'], digits=3)} | | | | |")
    return lines


def realsize_lines(result: dict) -> list[str]:
    gib = 1024 ** 3
    lines = ["", "| real SDXL UNet (random weights), fp32, rank 4, AdamW, batch 1, checkpointing: res | s/step | step adds "
             "(RssAnon, fixed mmap threshold) | --estimate_memory working memory | ratio | tensor bytes counted | step adds "
             "(glibc default) | estimated total |", "|" + "---|" * 8]
    for row in result.get("training", []):
        seconds = row["step_seconds"][1:-1] if len(row["step_seconds"]) > 2 else row["step_seconds"]  # not the first, not the counted one
        tensors = row.get("tensor_peak_bytes")
        lines.append(f"| {row['resolution']} | {sum(seconds) / max(len(seconds), 1):,.1f} | {row['step_added_bytes'] / gib:.2f} GiB "
                     f"| {row['estimated_working_bytes'] / gib:.2f} GiB | {_ratio(row['ratio'])} "
                     f"| {'n/a' if tensors is None else f'{tensors / gib:.2f} GiB'} "
                     f"| {row['step_added_default_malloc_bytes'] / gib:.2f} GiB | {row['estimated_total_bytes'] / gib:.2f} GiB |")
    for row in result.get("estimate_only", []):
        lines.append(f"| {row['resolution']} ({row['precision']}, estimate only) | | | "
                     f"{(row['estimate']['activations'] + row['estimate']['lora_gradients']) / gib:.2f} GiB | | | "
                     f"| {row['estimated_total_bytes'] / gib:.2f} GiB (fits 12 GB: {row['fits_12_gb']}) |")
    loading = result.get("loading") or {}
    if loading:
        lines += ["", "| loading the fp16 real-size file for a bf16 run | peak RSS | anonymous memory after | seconds |", "|---|---|---|---|"]
        for name, runs in loading.items():
            for run in runs:
                lines.append(f"| {name} | {run['peak_rss'] / gib:.2f} GiB | {run['anon_after'] / gib:.2f} GiB | {run['seconds']:.1f} |")
    return lines


def _calibration_and_hardware_lines(report: dict) -> list[str]:
    lines = []
    for size, calibration in report.get("memory_estimate", {}).items():
        lines += ["", f"| --estimate_memory on {size}: res | batch | checkpointing | estimated working memory | step adds (fixed mmap "
                  "threshold) | ratio | step adds (glibc default) | ratio | tensor bytes counted |", "|" + "---|" * 9]
        for case in calibration["cases"]:
            default = case.get("measured_default_malloc_bytes")
            lines.append(f"| {case['resolution']} | {case['batch_size']} | {case['gradient_checkpointing']} "
                         f"| {case['estimated_bytes'] / MIB:,.1f} MiB | {case['measured_bytes'] / MIB:,.1f} MiB | {case['ratio']:.3f} "
                         f"| {_mib(default)} | {_ratio(case.get('ratio_default_malloc'))} | {_mib(case.get('tensor_bytes'))} |")
    if report.get("efficiency"):
        lines += efficiency_lines(report["efficiency"])
    if report.get("realsize"):
        lines += realsize_lines(report["realsize"])
    if report.get("hardware"):
        from library.diagnostics.benchmark.hardware import format_hardware

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
