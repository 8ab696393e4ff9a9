"""Training and generation as a GPU user runs them, on pretend CUDA (tools/pretend_cuda).

Every scenario of tools/pretend_cuda/scenarios.py is a real `sdxl_train_network.main` run (2 steps, a
sample, validation, a save) with the trainer on cuda:0, run by the background worker
(tests/cuda_sim/worker.py, started at session start by conftest.py). A tensor left on the CPU, a
CPU generator used for cuda tensors, or a device-specific RNG not saved for resume fails here
as it would on a GPU. `python -m pytest -m cuda_sim` runs only these.
"""
from __future__ import annotations

import math

import pytest

from tools.pretend_cuda.scenarios import SCENARIOS

pytestmark = pytest.mark.cuda_sim

TRAINING = [name for name, scenario in SCENARIOS.items() if scenario.kind == "train"]
HALF = {"fp16": "float16", "bf16": "bfloat16"}


def ok(result: dict) -> dict:
    if result["status"] != "ok":
        pytest.fail(f"{result['error']}\n{result.get('traceback', '')[-4000:]}\n" + "\n".join(result.get("output_tail", [])))
    assert result["exit_code"] == 0, result.get("output_tail")
    return result


def validation_values(result: dict) -> list[float]:
    return [values[key] for _, values in result["logs"] for key in values if key.startswith("loss/validation")]


def check_precision(name: str, result: dict) -> None:
    options = SCENARIOS[name].options
    mixed = options.get("mixed_precision", "no")
    placed = {component: dtypes for action, component, device, dtypes in result["placement"] if action == "place"}
    if options.get("fp8_base"):
        assert "float8_e4m3fn" in placed["unet"], placed
    elif mixed != "no":
        assert placed["unet"] == [HALF[mixed]], placed
    else:
        assert placed["unet"] == ["float32"], placed
    full = options.get("full_fp16") or options.get("full_bf16")
    assert result["network_dtypes"] == ([f"torch.{HALF[mixed]}"] if full else ["torch.float32"])


@pytest.mark.parametrize("scenario", TRAINING)
def test_training_runs_on_the_device(scenario, cuda_sim_results):
    result = ok(cuda_sim_results.result(scenario))
    spec = SCENARIOS[scenario]
    assert result["device"] in ("cuda", "cuda:0")
    assert result["network_devices"] == ["cuda:0"]
    assert {device for action, _, device, _ in result["placement"] if action in ("place", "use")} <= {"cuda", "cuda:0"}
    # the loss of every batch is computed on the device, is finite, and the step ran device ops
    assert len(result["losses"]) == 2 or spec.data == "preservation"
    assert all(device == "cuda:0" and math.isfinite(loss) for loss, device, _ in result["losses"]), result["losses"]
    assert result["cuda_ops"] > 1000
    check_precision(scenario, result)
    lora = result["lora"]
    assert lora["exists"] and lora["finite"] and lora["keys"] > 100
    if spec.data != "preservation":  # diff_output_preservation starts with a zero loss: nothing moves yet
        assert lora["trained_max"] > 0
    if spec.samples:
        assert result["samples"] == ["tiny_lora_000001_00_5.png"]
    if spec.validation:
        values = validation_values(result)
        assert len(values) == 1 and math.isfinite(values[0])
    if spec.options.get("train_text_encoder_ti"):
        assert result["embeddings"]["exists"] and result["embeddings"]["finite"] and result["embeddings"]["trained_max"] > 0
    if spec.options.get("network_module") == "lycoris.kohya":
        assert result["lora"]["ss_network_module"] == "lycoris.kohya"


@pytest.mark.cuda_sim_scenarios("resume_with_dropout")
def test_resume_with_dropout_is_bit_identical_on_the_device(cuda_sim_results):
    """network/rank/module dropout draw from the device's generator: a resume is exact only when the
    state carries the CUDA RNG (per process), not only the CPU's."""
    result = ok(cuda_sim_results.result("resume_with_dropout"))
    assert result["device"] in ("cuda", "cuda:0")
    assert result["compared_tensors"] > 100
    assert result["differing_tensors"] == []
    assert result["losses_resumed"] == result["losses_straight"]
    assert len(result["losses_straight"]) == 4


@pytest.mark.cuda_sim_scenarios("offload_equals_checkpointing")
def test_cpu_offload_checkpointing_holds_inputs_on_the_host_and_trains_the_same(cuda_sim_results):
    """On the device (unlike the CPU, where it is a no-op) each checkpointed block's inputs are copied to
    host memory and back; gradients flow through the copies, so the LoRA equals plain checkpointing's (to
    float rounding: the copies add autograd nodes, which changes the order gradients are summed in)."""
    result = ok(cuda_sim_results.result("offload_equals_checkpointing"))
    assert result["offload_calls"] > 10
    assert result["input_devices"] == ["cuda:0"] and result["copies_to"] == ["cpu", "cuda:0"]
    assert result["compared_tensors"] > 100 and result["max_value"] > 1e-4
    assert result["max_difference"] <= 1e-4 * result["max_value"], result


@pytest.mark.cuda_sim_scenarios("sdxl_gen_img_lora")
def test_generation_with_a_lora_on_the_device(cuda_sim_results):
    result = ok(cuda_sim_results.result("sdxl_gen_img_lora"))
    assert {weight: entry["files"] for weight, entry in result["images"].items()} == {"0": ["0000_3.png"], "1": ["0000_3.png"]}
    assert result["lora_changes_image"]
    assert result["cuda_ops"] > 1000


@pytest.mark.cuda_sim_scenarios("planted_cpu_tensor")
def test_a_cpu_tensor_in_the_batch_path_raises_like_cuda(cuda_sim_results):
    """Negative control: the batch's latents moved to the CPU (a trainer bug) must fail as on a GPU."""
    result = ok(cuda_sim_results.result("planted_cpu_tensor"))
    assert result["raised"] is not None and result["raised"].startswith(
        "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"), result


@pytest.mark.cuda_sim_scenarios("device_rules")
def test_pretend_cuda_enforces_cudas_rules(cuda_sim_results):
    """The simulator itself: what CUDA allows passes, what CUDA refuses raises, and state moves as on a GPU."""
    rules = ok(cuda_sim_results.result("device_rules"))["rules"]
    failed = {name: outcome for name, outcome in rules.items() if outcome is not True}
    assert not failed, failed
    assert len(rules) >= 15
