"""The benchmark's `kohya` section (our trainer vs kohya's sdxl_train_network.py), without kohya:
one command line for both sides, one measured run of our side on the tiny model, the arithmetic
over runs, the report's schema, table and target checks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from library.diagnostics.benchmark.peers import kohya

from library.diagnostics.benchmark.peers import kohya_report
from library.diagnostics.benchmark.report import SchemaError, format_table, validate_report
from library.diagnostics.benchmark.suite import has_checkable_sections, target_checks


def test_both_sides_get_one_command_line(tmp_path):
    arguments = kohya.shared_arguments(tmp_path / "m.safetensors", tmp_path / "img", tmp_path / "tok", tmp_path / "run", 6, "bf16")
    theirs, cwd = kohya.command("kohya", "/venv/bin/python", Path("/src/sd-scripts"), arguments)
    ours, our_cwd = kohya.command("ours", sys.executable, Path("/src/sd-scripts"), arguments)
    assert theirs[:2] == ["/venv/bin/python", "/src/sd-scripts/sdxl_train_network.py"] and cwd == Path("/src/sd-scripts")
    assert ours[1].endswith("sdxl_train_network.py") and our_cwd != cwd
    assert theirs[2:] == ours[2:] == arguments
    for flag in ("--network_train_unet_only", "--cache_latents", "--cache_text_encoder_outputs", "--gradient_checkpointing",
                 "--sdpa"):
        assert flag in arguments
    from library.training.config.config_loader import resolve_config

    args = resolve_config(arguments).args  # every option is one our trainer knows, as kohya's
    assert (args.network_dim, args.network_alpha, args.train_batch_size, args.max_train_steps) == (4, 4.0, 1, 6)
    assert args.resolution in ((512, 512), "512,512") and args.mixed_precision == "bf16" and args.tokenizer_cache_dir == str(tmp_path / "tok")


def test_our_side_measured_on_the_tiny_model(tmp_path, tiny_single_file):
    from library.data.demo_images import make_concept_images

    make_concept_images(tmp_path / "img" / "1_bench", count=2, caption=kohya.CAPTION, sizes=[(64, 64)])
    tokenizers = kohya.write_tokenizers(tmp_path / "tok")
    assert sorted(p.name for p in tokenizers.iterdir()) == sorted(kohya.KOHYA_TOKENIZER_FOLDERS)
    arguments = kohya.shared_arguments(tiny_single_file, tmp_path / "img", tokenizers, tmp_path / "run", 3, "no", resolution=64)
    cmd, cwd = kohya.command("ours", sys.executable, tmp_path, arguments)
    run = kohya.measure_run("ours", cmd, cwd, tmp_path / "run", kohya.child_environment(1), 3)
    assert run["steps"] == 3 and len(run["losses"]) == 3 and len(run["step_gaps_seconds"]) == 2
    assert all(gap > 0 for gap in run["step_gaps_seconds"]) and run["peak_rss_bytes"] > run["peak_anonymous_bytes"] > 0
    assert run["modules"] > 100  # the tiny UNet's LierLa modules
    assert run["first_step_after_start_seconds"] < run["wall_seconds"]


def _run(steps: int, gaps: list[float], wall: float, rss: int, losses: list[float]) -> dict:
    return {"steps": steps, "wall_seconds": wall, "peak_rss_bytes": rss, "peak_anonymous_bytes": rss // 2,
            "step_gaps_seconds": gaps, "first_step_after_start_seconds": 60.0, "losses": losses, "modules": 722}


def _section() -> dict:
    runs = {"kohya": [{"short": _run(3, [24.0, 24.0], 150.0, 22 << 30, [1.0, 0.9, 0.95]),
                       "long": _run(6, [24.0] * 5, 222.0, 22 << 30, [1.0, 1.1, 0.9, 0.8, 0.85, 0.7])}],
            "ours": [{"short": _run(3, [20.0, 20.0], 100.0, 15 << 30, [1.0, 0.9, 0.95]),
                      "long": _run(6, [20.0] * 5, 160.0, 15 << 30, [1.0, 1.1, 1.2, 1.3, 1.2, 1.1])}]}
    return {"kohya_dir": "/k", "python": "/p", "threads": 2, "resolution": 512, "images": 4, "rank": 4,
            "steps": {"short": 3, "long": 6}, "repeats": 1, "model": "/m",
            "precisions": {"no": {"kohya": kohya.summarize_side(runs["kohya"]), "ours": kohya.summarize_side(runs["ours"]),
                                  **kohya.compare(runs["ours"], runs["kohya"]), "runs": runs}}}


def test_arithmetic_schema_table_and_targets():
    section = _section()
    result = section["precisions"]["no"]
    assert result["ours"]["step_seconds_in_run"]["median"] == 20.0
    assert result["kohya"]["step_seconds_short_long"]["median"] == pytest.approx((222 - 150) / 3)
    assert result["step_ratio"]["median"] == pytest.approx(20 / 24)
    assert result["whole_run_ratio"]["median"] == pytest.approx(160 / 222)
    assert result["kohya"]["loss_falls"] == [True] and result["ours"]["loss_falls"] == [False]
    report = {"schema_version": 1, "environment": {}, "targets": {}, "fp8": {}, "kohya": section}
    assert has_checkable_sections(report)
    report["target_checks"] = target_checks(report, "small")
    checks = report["target_checks"]
    assert checks["kohya_step_ratio_no"]["met"] is True and checks["kohya_whole_run_ratio_no"]["met"] is True
    assert checks["kohya_peak_rss_ratio_no"]["value"] == pytest.approx(15 / 22) and checks["kohya_peak_rss_ratio_no"]["met"]
    validate_report(report)
    table = format_table(report)
    assert "| no (3 / 6 steps, 1 pairs) | 24.00 | 20.00 | 0.83 |" in table and "| 722 / 722 | 1/1 / 0/1 |" in table
    del section["precisions"]["no"]["ours"]["peak_rss_bytes"]
    with pytest.raises(SchemaError, match=r"kohya\.precisions\.no\.ours\.peak_rss_bytes"):
        kohya_report.validate_kohya(section)


def test_a_hardware_only_report_is_not_checked():
    assert not has_checkable_sections({"hardware": {"rows": []}})
    assert not has_checkable_sections({"training": {"tiny": {}}, "startup": {}})  # preparation missing
