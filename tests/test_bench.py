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
    assert report["fp8"]["supported"] is False
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
    from library.benchmark.suite import target_checks

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
