"""Half precision on the CPU is the GPU code path: every mixed_precision / full_* combination trains,
samples, validates and saves; models are placed once, in their dtype, before anything is cached;
fp16 loss scaling keeps gradients that fp16 alone would flush to zero."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open

from library.errors import UserError
from tests.test_train_run import logged
from tests.training_fixtures import base_config, make_concept_images, train_in_process, write_config

CAPTION = "TOK, 1girl, black suit"
SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HALF = {"fp16": "float16", "bf16": "bfloat16"}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision_data")
    make_concept_images(root / "1_TOK", count=3, caption=CAPTION, sizes=[(32, 32)])
    return root


def _train(tmp_path, model, train_dir, name, **overrides):
    return train_in_process(tmp_path, model, train_dir, name, resolution="32,32", min_bucket_reso=32, max_bucket_reso=64,
                            train_batch_size=1, max_train_steps=2, **overrides)


# Each cell: samples, validation and cached latents; cached text-encoder outputs with a LyCORIS
# algorithm, or pivotal tuning (which cannot use cached text outputs) with LoRA, alternating so each
# half dtype meets both.
MATRIX = [
    ("no", False, "text_cache_loha", "float"),
    ("fp16", False, "pivotal", "fp16"),
    ("fp16", True, "text_cache_loha", "bf16"),
    ("bf16", False, "text_cache_loha", "fp16"),
    ("bf16", True, "pivotal", "float"),
]


@pytest.mark.parametrize("mixed, full, variant, save_precision", MATRIX, ids=[f"{m}-{'full' if f else 'mixed'}-{v}" for m, f, v, _ in MATRIX])
def test_precision_matrix(mixed, full, variant, save_precision, tiny_single_file, images, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("TOK on a roof --w 64 --h 64 --s 2 --d 5\n")
    options = dict(mixed_precision=mixed, save_precision=save_precision, sample_prompts=str(prompts), sample_every_n_steps=1,
                   validation_split=0.34, validate_every_n_steps=2, log_with="tensorboard", logging_dir=str(tmp_path / "logs"),
                   network_train_unet_only=True, learning_rate=1e-3)
    if full:
        options[f"full_{mixed}"] = True
    if variant == "pivotal":
        options.update(train_text_encoder_ti=True, train_text_encoder_ti_frac=1.0)
    else:
        options.update(cache_text_encoder_outputs=True, network_module="lycoris.kohya", network_args=["algo=loha", "preset=attn-mlp"])
    trainer, final = _train(tmp_path, tiny_single_file, images, "cell", **options)

    assert trainer.mixed == mixed
    assert sorted(p.name for p in (tmp_path / "cell_out" / "sample").glob("*.png")) == ["tiny_lora_000001_00_5.png"]
    validation = [value for _, value in logged(tmp_path / "logs", "loss/validation/step_average")]
    assert len(validation) == 1 and all(math.isfinite(v) for v in validation)
    with safe_open(str(final), framework="pt") as handle:
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys() if not key.endswith("alpha")}
        assert dtypes == {SAVE_DTYPES[save_precision]}
        trained = [handle.get_tensor(k) for k in handle.keys() if k.endswith(("lora_up.weight", "hada_w2_a"))]
    assert trained and all(torch.isfinite(t).all() for t in trained)
    if variant == "pivotal":
        emb = final.with_name("tiny_lora_emb.safetensors")
        with safe_open(str(emb), framework="pt") as handle:
            assert all(torch.isfinite(handle.get_tensor(k)).all() for k in handle.keys())
    # the trainable weights are in the half dtype only with full_*; the base models always are
    trainable = {str(p.dtype).removeprefix("torch.") for p in trainer.network.parameters() if p.requires_grad}
    assert trainable == ({HALF[mixed]} if full else {"float32"})
    placed = trainer.placement.where("place")
    assert {e.component for e in placed} == {"unet", "text_encoder1", "text_encoder2", "vae"}
    expected = "float32" if mixed == "no" else HALF[mixed]
    assert all(e.dtypes == (expected,) for e in placed), placed


def test_no_base_model_on_the_device_in_fp32_and_caches_after_placement(tiny_single_file, images, tmp_path):
    trainer, _ = _train(tmp_path, tiny_single_file, images, "order", mixed_precision="bf16", no_half_vae=True,
                        cache_text_encoder_outputs=True, network_train_unet_only=True)
    events = [(e.action, e.component, e.dtypes, e.purpose) for e in trainer.placement.events]
    assert events == [
        ("place", "vae", ("float32",), "cache latents"),  # no_half_vae: the VAE alone stays fp32
        ("place", "text_encoder1", ("bfloat16",), "encode captions"),
        ("place", "text_encoder2", ("bfloat16",), "encode captions"),
        ("use", "vae", ("float32",), "cache latents"),
        ("use", "text_encoder1", ("bfloat16",), "cache text-encoder outputs"),
        ("use", "text_encoder2", ("bfloat16",), "cache text-encoder outputs"),
        # nothing needs them afterwards (no samples, no validation): they leave memory
        ("release", "vae", ("float32",), "latents cached; no samples"),
        ("release", "text_encoder1", ("bfloat16",), "text-encoder outputs cached"),
        ("release", "text_encoder2", ("bfloat16",), "text-encoder outputs cached"),
        ("place", "unet", ("bfloat16",), "training"),
    ]
    assert all(e.device == "meta" for e in trainer.placement.where("release"))
    assert all(e.device == str(trainer.device) for e in trainer.placement.where("place") + trainer.placement.where("use"))


def test_half_precision_on_a_cpu_without_its_kernels_says_so_and_full_needs_its_precision(tiny_single_file, images, tmp_path):
    from library.training.config.config_loader import resolve_config
    from library.training.residency.precision import cpu_has_half_kernels
    from library.training.loop import Trainer

    config = base_config(tiny_single_file, images, tmp_path / "out", mixed_precision="fp16")
    trainer = Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "a.toml", config))]))
    trainer.setup_accelerator()
    assert trainer.mixed == "fp16"  # as configured: no downgrade
    slow = [n for n in trainer.notices if "slow" in n]
    if cpu_has_half_kernels("fp16") or torch.cuda.is_available():
        assert slow == []
    else:
        assert slow == ['mixed_precision = "fp16" on this CPU is correct but slow: it has no fp16 matrix instructions '
                        '(AVX-512 FP16 or AMX-FP16), so convolutions and matmuls take a path tens of times slower than fp32']
    config = base_config(tiny_single_file, images, tmp_path / "out", mixed_precision="bf16", full_fp16=True)
    with pytest.raises(UserError, match=r'full_fp16 needs mixed_precision = "fp16"'):  # before any model loads
        Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "b.toml", config))]))


def test_loss_scaling_keeps_fp16_gradients_that_would_underflow():
    """A loss whose fp16 gradients are below fp16's smallest subnormal (6e-8): unscaled they are 0;
    scaled, copied into fp32 masters and unscaled there, they match an fp32 reference."""
    from library.training.residency.loss_scaling import loss_scaling

    torch.manual_seed(0)
    x = torch.randn(8, 16)
    reference = torch.nn.Parameter(torch.randn(4, 16) * 0.1)
    weight = torch.nn.Parameter(reference.detach().half())

    def loss_of(w):
        return (x.to(w.dtype) @ w.t()).float().square().mean() * 1e-9

    loss_of(reference).backward()
    plain = weight.detach().clone().requires_grad_(True)
    loss_of(plain).backward()
    assert reference.grad.abs().max() < 6e-8 and torch.count_nonzero(plain.grad) == 0  # fp16 alone: all zero

    scaling = loss_scaling("fp16", True, "cpu", [{"params": [weight], "lr": 1e5}])
    optimizer = torch.optim.SGD(scaling.optimizer_groups(), lr=1e5)
    scaling.scale(loss_of(weight)).backward()
    scaling.unscale_(optimizer)
    master = scaling.optimized[0]
    assert master.dtype == torch.float32 and weight.grad is None
    torch.testing.assert_close(master.grad, reference.grad, rtol=0, atol=2e-2 * float(reference.grad.abs().max()))
    before = weight.detach().clone()
    assert scaling.step(optimizer)
    assert weight.dtype == torch.float16 and not torch.equal(weight, before)  # the update reached the fp16 weights
    torch.testing.assert_close(weight.float(), master.detach().half().float())

    # an overflowing step is skipped and the scale halves; the state round-trips with the masters
    scale = scaling.scaler.get_scale()
    scaling.scale(loss_of(weight) * 1e30).backward()
    scaling.unscale_(optimizer)
    assert not scaling.step(optimizer) and scaling.scaler.get_scale() == scale / 2
    state = scaling.state_dict()
    other = loss_scaling("fp16", True, "cpu", [{"params": [torch.nn.Parameter(torch.zeros(4, 16).half())]}])
    other.load_state_dict(state)
    assert other.scaler.get_scale() == scale / 2 and torch.equal(other.optimized[0], master)


def test_caching_tools_place_models_as_training_does(tiny_single_file, images, tmp_path):
    """tools/cache_latents.py and tools/cache_text_encoder_outputs.py in bf16 write the caches a bf16
    training run then finds fresh (same placement, same dtypes, same fingerprints): it re-encodes nothing."""
    from tools import cache_latents, cache_text_encoder_outputs

    config = base_config(tiny_single_file, images, tmp_path / "out", resolution="32,32", min_bucket_reso=32, max_bucket_reso=64,
                         mixed_precision="bf16", cache_latents_to_disk=True, cache_text_encoder_outputs_to_disk=True,
                         network_train_unet_only=True, train_batch_size=1, max_train_steps=1)
    path = write_config(tmp_path / "tools.toml", config)
    assert cache_latents.main(["--config_file", str(path), "--overwrite"]) == 0
    assert cache_text_encoder_outputs.main(["--config_file", str(path), "--overwrite"]) == 0
    caches = sorted(images.rglob("*_sdxl.npz")) + sorted(images.rglob("*_te_outputs.npz"))
    assert len(caches) == 6
    written = {p: p.stat().st_mtime_ns for p in caches}
    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer

    trainer = Trainer(resolve_config(["--config_file", str(path)]))
    trainer.setup()
    assert not [n for n in trainer.notices if n.startswith("cached latents of")]
    trainer.run()
    assert {p: p.stat().st_mtime_ns for p in caches} == written


def test_full_fp16_resume_is_bit_exact(tiny_single_file, images, tmp_path):
    """The grad scaler's scale and the fp32 master weights are part of the state: 2 + 2 steps == 4."""
    from tests.training_fixtures import lora_tensors

    common = dict(resolution="32,32", min_bucket_reso=32, max_bucket_reso=64, train_batch_size=1, mixed_precision="fp16",
                  full_fp16=True, save_state_on_train_end=True, network_train_unet_only=True)
    _, full = train_in_process(tmp_path, tiny_single_file, images, "full", max_train_steps=4, **common)
    _, half = train_in_process(tmp_path, tiny_single_file, images, "half", max_train_steps=2, **common)
    trainer, resumed = train_in_process(tmp_path, tiny_single_file, images, "half", max_train_steps=4, resume=str(half.parent),
                                        **common)
    assert trainer.scaler.pairs  # fp16 weights with fp32 masters
    a, b = lora_tensors(full), lora_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
