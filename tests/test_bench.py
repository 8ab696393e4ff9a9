"""tools/bench.py runs on `tiny` with one repetition and writes a report with every figure of the
performance issue (its schema is checked, never its times)."""
from __future__ import annotations

import json

import pytest

from library.diagnostics.benchmark import runner
from library.diagnostics.benchmark.report import SchemaError, format_table, validate_report
from library.diagnostics.benchmark.measure import summarize


def test_bench_tiny_report_has_every_figure(tmp_path, monkeypatch):
    from tools import bench

    monkeypatch.setattr(runner, "ISOLATED", True)  # bench.main sets it from --in_process
    output = tmp_path / "report.json"
    argv = ["--sizes", "tiny", "--repeats", "1", "--steps", "1", "--warmup", "1", "--resolution", "64", "--quick",
            "--in_process", "--index_images", "40", "--caching_images", "2", "--caching_size", "tiny",
            "--text_caching_size", "tiny", "--text_caching_images", "4",
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
    text = report["preparation"]["text_encoder_caching"]
    assert text["distinct_captions"]["distinct"] == 4 and text["dreambooth_captions"]["distinct"] == 4
    assert text["dreambooth_captions"]["batched_images_per_s"]["n"] == 1
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


def _learning_result(w0, w1, base_w1, pivotal=False):
    rates = {"a red circle": 1.0, "a green square": base_w1}
    base = {"w0": {"mean": 1.0, "min": 1.0, "per_prompt": rates}, "w1": {"mean": (1 + base_w1) / 2, "min": base_w1, "per_prompt": rates}}
    concept = {"w0": w0, "w1": w1, **({"w0_without_embedding": 0.0} if pivotal else {})}
    return {"algorithm": "x", "train_seconds": 50.0, "steps": 160, "argv": [], "concept_rate": concept, "base_accuracy": base,
            "curve": [[80, 0.5], [160, w1]], "steps_to_target": 160 if w1 >= 0.8 else None, "seeds": 16}


def test_learning_only_report_validates_and_prints_one_row_per_network():
    """tools/bench.py --sections learning: a report with only the learning section is complete."""
    from library.diagnostics.benchmark.suite import target_checks

    learning = {"world": {"path": "w", "fingerprint": "f", "build_seconds": 100.0, "build_threads": 1},
                "sampler": {"name": "ddim", "steps": 20, "guidance": 5.0, "seeds": 16}, "targets": {},
                "algorithms": {"LoRA": _learning_result(0.0, 0.9375, 0.75), "LoKr": _learning_result(0.0, 0.25, 1.0),
                               "pivotal": _learning_result(1.0, 1.0, 0.875, pivotal=True)}}
    report = {"schema_version": 1, "environment": {}, "targets": {}, "fp8": {"supported": False}, "learning": learning}
    report["target_checks"] = target_checks(report, "tiny")
    validate_report(report)
    assert report["target_checks"]["learning_LoRA"]["met"] is True
    assert report["target_checks"]["learning_LoKr"]["met"] is False  # 0.25 < 0.8 at weight 1
    assert report["target_checks"]["learning_pivotal"]["met"] is True  # judged without its embedding at weight 0
    table = format_table(report)
    assert "| LoRA | 160 | 50 s | 0.00 | 0.94 | 1.00 (1.00) | 0.88 (0.75) | 160 |" in table
    assert "| LoKr | 160 | 50 s | 0.00 | 0.25 |" in table and "not reached" in table
    assert "0.00 (1.00 with the embedding)" in table
    del learning["algorithms"]["LoRA"]["concept_rate"]["w1"]
    with pytest.raises(SchemaError, match="learning.algorithms.LoRA.concept_rate.w1"):
        validate_report(report)


def test_learning_only_run_reports_and_keeps_each_network_as_it_finishes(tmp_path, monkeypatch):
    """run_benchmark with --sections learning (no performance sections): target checks made, and each
    network's figures written beside its files as soon as it is measured (the section takes ~20 min)."""
    from library.diagnostics.benchmark import learning as learning_section

    def fake_task(task, params, timeout=None, env=None):
        if task == "toy_world":
            return {"fingerprint": "f", "total_seconds": 1.0, "threads": 1}
        return {**_learning_result(0.0, 0.9375, 0.75), "algorithm": params["algorithm"]}

    from tools import bench

    monkeypatch.setattr(learning_section, "run_task", fake_task)
    output = tmp_path / "report.json"
    assert bench.main(["--sections", "learning", "--algorithms", "LoRA", "LoKr", "--workdir", str(tmp_path),
                       "--output", str(output)]) == 0
    report = json.loads(output.read_text(encoding="utf-8"))
    assert report["target_checks"]["learning_LoRA"]["met"] is True and "step_time_ratio" not in report["target_checks"]
    kept = json.loads((tmp_path / "learning" / "LoKr" / "result.json").read_text(encoding="utf-8"))
    assert kept["algorithm"] == "LoKr" and kept["concept_rate"]["w1"] == 0.9375


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


def test_realsize_and_efficiency_tables():
    """tools/bench.py --sections realsize / efficiency print their tables (docs/performance.md)."""
    gib = 1024 ** 3
    stat = summarize([2.0, 2.0])
    estimate = {"activations": 0.3 * gib, "lora_gradients": 0.03 * gib}
    report = {"training": {}, "memory_estimate": {}, "realsize": {
        "training": [{"resolution": 512, "step_seconds": [100.0, 90.0, 200.0], "step_added_bytes": 0.32 * gib,
                      "estimated_working_bytes": 0.33 * gib, "ratio": 1.03, "tensor_peak_bytes": 0.3 * gib,
                      "step_added_default_malloc_bytes": 1.7 * gib, "estimated_total_bytes": 10.4 * gib}],
        "estimate_only": [{"resolution": 1024, "precision": "bf16", "estimate": estimate, "estimated_total_bytes": 7.23 * gib,
                           "fits_12_gb": True}],
        "loading": {"direct_bf16": [{"peak_rss": 7.2 * gib, "anon_after": 7.16 * gib, "seconds": 45.0}]}},
        "efficiency": {"model": "small", "resolution": 256, "batch_size": 2, "rank": 4, "threads_1": {
            "flops_per_step": 31.2e9, "gemm_flops_per_second": summarize([75e9]), "step_seconds": summarize([1.0]),
            "achieved_flops_per_second": summarize([30e9]), "efficiency": summarize([0.4]), "compute_limit_seconds": summarize([0.414]),
            "step_over_limit": summarize([2.5])}, "two_over_one_thread_step": stat}}
    table = format_table(report)
    # s/step leaves out the first step and the tensor-counted last one
    assert "| 512 | 90.0 | 0.32 GiB | 0.33 GiB | 1.030 | 0.30 GiB | 1.70 GiB | 10.40 GiB |" in table
    assert "| 1024 (bf16, estimate only) | | | 0.33 GiB | | | | 7.23 GiB (fits 12 GB: True) |" in table
    assert "| direct_bf16 | 7.20 GiB | 7.16 GiB | 45.0 |" in table
    assert "| 1 | 31.2 | 75 GFLOP/s | 1.000 s | 30 GFLOP/s | 40% | 0.414 s | 2.50 |" in table


def test_real_size_checkpoint_has_the_sdxl_architecture():
    """The realsize section's checkpoint: the real SDXL 1.0 key set and shapes (2.567 B UNet
    parameters), read back by the loader's own shape inference; only the text encoders' depth differs."""
    import math

    from library.diagnostics.benchmark.real_size_model import meta_state_dict
    from library.models import sdxl_architecture as arch

    groups = arch.split_checkpoint_shapes({k: tuple(v.shape) for k, v in meta_state_dict(text_encoder_layers=1).items()})
    assert sum(math.prod(shape) for shape in groups["unet"].values()) == 2_567_463_684
    unet = arch.infer_unet_config(groups["unet"])
    assert {k: unet[k] for k in ("block_out_channels", "transformer_layers_per_block", "cross_attention_dim")} == {
        "block_out_channels": [320, 640, 1280], "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048}
    te2 = arch.infer_te2_config(groups["te2"])
    assert (te2["hidden_size"], te2["num_hidden_layers"]) == (1280, 1)
