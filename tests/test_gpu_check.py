"""tools/gpu_check.sh runs on a CPU-only machine: its CPU rows train and pass, GPU rows are skipped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour")
def test_gpu_check_on_a_cpu_only_machine(tmp_path):
    report = tmp_path / "report.json"
    done = subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), "--rows", "cpu-tiny-fp8_base", "small-fp16",
                           "small-bf16-2gpus", "--steps", "2", "--workdir", str(tmp_path / "work"), "--output", str(report)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith(("cpu-", "small-"))}
    assert lines["cpu-tiny-fp8_base"].endswith("pass") and " cpu " in lines["cpu-tiny-fp8_base"]
    assert lines["small-fp16"].endswith("skipped: no CUDA") and lines["small-bf16-2gpus"].endswith("skipped: no CUDA")
    data = json.loads(report.read_text())
    row = data["cpu-tiny-fp8_base"]
    assert row["losses_finite"] and row["samples"] == 1 and len(row["validation"]) == 1 and row["estimate_bytes"] > 0
    assert ["unet", ["bfloat16", "float32", "float8_e4m3fn"]] in row["placed"]  # fp8 weights, fp32 scales
    assert data["small-fp16"]["skipped"] == "skipped: no CUDA"
    assert sys.executable  # (the script runs with the same interpreter through bash's python)
