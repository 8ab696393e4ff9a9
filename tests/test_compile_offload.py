"""torch_compile compiles the UNet's blocks (the LoRA inside them) and trains to the same weights;
cpu_offload_checkpointing turns checkpointing on and is a no-op, said once, on the CPU."""
from __future__ import annotations

import pytest
import torch

from library.errors import UserError
from tests.training_fixtures import lora_tensors, make_concept_images, train_in_process


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_data")
    make_concept_images(root / "1_catwomen", count=2, sizes=[(32, 32)])
    return root


SMALL = dict(resolution="32,32", min_bucket_reso=32, max_bucket_reso=64, train_batch_size=1, max_train_steps=2)


def test_torch_compile_trains_the_same_lora(tiny_single_file, images, tmp_path):
    sgd = dict(optimizer_type="SGDNesterov", learning_rate=0.5)  # (Adam would magnify rounding differences of near-zero gradients)
    eager, plain = train_in_process(tmp_path, tiny_single_file, images, "eager", **SMALL, **sgd)
    # aot_eager: dynamo capture and AOT autograd exactly as inductor uses them, without its (minutes long on a CPU) codegen
    trainer, compiled = train_in_process(tmp_path, tiny_single_file, images, "compiled", torch_compile=True,
                                         dynamo_backend="aot_eager", **SMALL, **sgd)
    assert trainer.compiled == "aot_eager"
    blocks = [m for m in trainer.model.unet.modules() if type(m).__name__ in ("BasicTransformerBlock", "ResnetBlock2D")]
    assert blocks and all(getattr(m, "_compiled_call_impl", None) is not None for m in blocks)
    a, b = lora_tensors(plain), lora_tensors(compiled)
    assert any(v.abs().sum() > 0 for k, v in b.items() if "lora_up" in k)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_compile_backend_errors_and_inert_values(tiny_single_file, images, tmp_path):
    # one of kohya's choices that this torch does not have (TensorRT)
    with pytest.raises(UserError, match=r'dynamo_backend = "fx2trt" is not a torch.compile backend here; use one of .*inductor'):
        train_in_process(tmp_path, tiny_single_file, images, "bad", torch_compile=True, dynamo_backend="fx2trt", **SMALL)
    with pytest.raises(UserError, match=r'torch_compile = true needs a dynamo_backend'):
        train_in_process(tmp_path, tiny_single_file, images, "no", torch_compile=True, dynamo_backend="no", **SMALL)


def test_cpu_offload_checkpointing_is_a_no_op_on_the_cpu(tiny_single_file, images, tmp_path):
    trainer, offloaded = train_in_process(tmp_path, tiny_single_file, images, "offload", cpu_offload_checkpointing=True, **SMALL)
    assert trainer.args.gradient_checkpointing
    assert "cpu_offload_checkpointing is a no-op on the CPU (the checkpointed activations already live in host memory)" in trainer.notices
    _, checkpointed = train_in_process(tmp_path, tiny_single_file, images, "checkpointed", gradient_checkpointing=True, **SMALL)
    a, b = lora_tensors(offloaded), lora_tensors(checkpointed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_offloaded_checkpoint_keeps_gradients():
    """The offloading checkpoint function gives the gradients of a plain forward (on the CPU its
    host copies are the tensors themselves; on a GPU they are copies: tests/test_cuda_sim.py runs that
    branch on pretend CUDA, tools/gpu_check.sh on a real GPU)."""
    from library.training.residency.checkpointing import offloaded_checkpoint

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    expected = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    got = torch.autograd.grad(offloaded_checkpoint(block, x).square().sum(), [x, *block.parameters()])
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b)
