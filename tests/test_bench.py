"""tools/bench.py runs on `tiny` with one repetition and writes a report with every figure of the
performance issue (its schema is checked, never its times)."""
from __future__ import annotations

import json

import pytest

from library.benchmark import runner
from library.benchmark.report import SchemaError, format_table, validate_report
from library.benchmark.measure import summarize


def test_bench_tiny_report_has_every_figure(tmp_path, monkeypatch):
    from tools import bench

    monkeypatch.setattr(runner, "ISOLATED", True)  # bench.main sets it from --in_process
    output = tmp_path / "report.json"
    argv = ["--sizes", "tiny", "--repeats", "1", "--steps", "1", "--warmup", "1", "--resolution", "64", "--quick",
            "--in_process", "--index_images", "40", "--caching_images", "2", "--caching_size", "tiny",
            "--calibration_sizes", "tiny", "--workdir", str(tmp_path / "work"), "--output", str(output)]
    try:
        assert bench.main(argv) == 0
    finally:
        runner.ISOLATED, runner.THREADS = True, None
    report = json.loads(output.read_text(encoding="utf-8"))
    validate_report(report)
    tiny = report["training"]["tiny"]
    assert tiny["steps_measured"] == 1 and tiny["ours"]["step_seconds"]["n"] == 1
    # caching text-encoder outputs frees the text encoders for the training phase; without it they stay
    assert tiny["text_encoder_caching"]["text_encoders_resident_while_training"] == {"cached": False, "not_cached": True}
    assert report["preparation"]["indexing"]["all"]["images"] == 40
    assert report["preparation"]["indexing"]["quarter"]["images"] == 10
    assert report["fp8"]["supported"] is True
    assert set(report["target_checks"]) >= {"step_time_ratio", "peak_memory_ratio", "startup_ratio", "caching_ratio",
                                            "indexing_seconds", "checkpointing_reduction", "text_encoders_freed_with_caching"}
    table = format_table(report)
    assert "| tiny | 64 | 2 | 16 |" in table and "--estimate_memory on tiny" in table


def test_schema_check_rejects_a_missing_figure():
    stat = summarize([1.0, 2.0, 3.0])
    assert stat["median"] == 2.0 and stat["spread"] == pytest.approx(1.0)
    with pytest.raises(SchemaError, match="missing training"):
        validate_report({"schema_version": 1, "environment": {}, "targets": {}, "startup": {}, "memory_estimate": {},
                         "preparation": {}, "fp8": {}, "target_checks": {}})


def test_hardware_section_table():
    """tools/bench.py --sections hardware prints its own tables (the figures of docs/performance.md)."""
    stat = summarize([1.0, 1.2])
    row = {"step_seconds": stat, "first_step_seconds": stat, "unet_weight_bytes": 4 * 2**20, "losses": [1.0, 0.9], "steps": 2}
    report = {"training": {}, "memory_estimate": {}, "hardware": {
        "model": "small", "resolution": 256, "batch_size": 2,
        "precision": {"fp32": row, "bf16": {**row, "unet_weight_bytes": 2 * 2**20}, "bf16_fp8": {**row, "unet_weight_bytes": 2**20}},
        "fp8": {"unet_bytes_fp32": 4 * 2**20, "unet_bytes_bf16": 2 * 2**20, "unet_bytes_fp8": 2**20, "fp32_over_fp8": 4.0,
                "loss_relative_difference_max": 0.002, "loss_relative_difference_mean": 0.001},
        "compile": {"precision": "fp32", "first_step_seconds": 190.0, "uncompiled_first_step_seconds": 2.0, "step_seconds": 1.0,
                    "uncompiled_step_seconds": 1.1},
        "cpu_half_kernels": {"bf16": False, "fp16": False},
        "loader_workers": {"model": "tiny", "resolution": 512, "images": "photos", "step_seconds_0_workers": stat,
                           "step_seconds_2_workers": stat, "speedup": stat, "main_process_pixel_seconds_per_step_0_workers": stat,
                           "main_process_pixel_seconds_per_step_2_workers": stat}}}
    table = format_table(report)
    assert "| UNet weights fp32 / bf16 / fp8_base | 4.0 / 2.0 / 1.0 MiB (fp32 / fp8 = 4.00) |" in table
    assert "| fp8_base loss vs bf16, per step (same seed) | mean 0.10%, max 0.20% |" in table
    assert "| torch_compile (inductor, fp32) first step / uncompiled | 190.0 s / 2.0 s |" in table
