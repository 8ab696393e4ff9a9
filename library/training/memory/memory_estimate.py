"""`--estimate_memory`: the expected peak accelerator memory of a training run, from shapes only.

The models are built on the meta device from the checkpoint's tensor shapes (no weight is read),
the configured network is attached, and one training forward and backward pass runs on meta
tensors under `AllocationCounter`, a dispatch-mode counter that follows every tensor storage the
pass creates and frees. Its high-water mark is the working memory (activations, recomputation
with gradient checkpointing, LoRA gradients); the static parts (base weights, LoRA weights,
optimizer state) are counted from parameter shapes.

Calibrated against the process's own memory: the anonymous memory a real CPU training step adds
(RssAnon; library/diagnostics/benchmark/calibration.py, tests/test_memory_estimate.py, and at real SDXL size
`tools/bench.py --sections realsize`), or `torch.cuda.max_memory_allocated` on a GPU. What is
estimated is tensor bytes: on the CPU, glibc's malloc keeps part of what a step frees (see
docs/performance.md), and on a GPU the caching allocator's reserve comes on top.
"""
from __future__ import annotations

import contextlib
import json
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils._device import DeviceContext
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from library.errors import UserError

MIB = 1024 * 1024
# bytes of optimizer state per trainable parameter (fp32 parameters)
OPTIMIZER_STATE_BYTES = {
    "adamw": 8, "adam": 8, "adamw8bit": 2, "pagedadamw8bit": 2, "lion": 4, "lion8bit": 1, "sgdnesterov": 4,
    "sgdnesterov8bit": 1, "adafactor": 4, "prodigy": 16, "dadaptadam": 12, "dadaptation": 12, "came": 8,
}


class AllocationCounter(TorchDispatchMode):
    """Live and peak bytes of tensor storages created while the mode is active (views share a
    storage and count once; a storage counts until its last tensor is gone).

    An op's output that shares a storage with one of its inputs (a view, an in-place or `out=` op)
    allocated nothing: when that storage existed before the mode started (a frozen weight reached
    through the transposed view a Linear takes), it is not counted at all. Counting those was the
    old error: every base weight seen through a view became a "new" allocation that stayed live."""

    def __init__(self, conv_workspace: bool = False):
        super().__init__()
        self.live = self.peak = 0
        self._storages: dict[int, int] = {}
        self.conv_workspace = conv_workspace  # see CONVOLUTIONS
        self.largest_workspace = 0

    def _free(self, key: int) -> None:
        self.live -= self._storages.pop(key, 0)

    @staticmethod
    def _key(tensor) -> int | None:
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
            return None
        return tensor.untyped_storage()._cdata

    def _track(self, tensor, existing: set) -> None:
        key = self._key(tensor)
        if key is None or key in self._storages or key in existing:
            return
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        self._storages[key] = nbytes
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {key for key in map(self._key, tree_leaves((args, kwargs))) if key is not None}
        for item in tree_leaves(out):
            self._track(item, inputs)
        if self.conv_workspace and func in CONVOLUTIONS:  # the weight's blocked-layout copy, for the call only
            weight = args[1] if func == CONVOLUTIONS[0] else args[2]  # (input, weight, ...) / (grad_output, input, weight, ...)
            workspace = weight.numel() * weight.element_size()
            self.largest_workspace = max(self.largest_workspace, workspace)
            self.peak = max(self.peak, self.live + workspace)
        return out


# Memory convolution kernels take beside the tensors: on the CPU, oneDNN copies a plain-layout weight
# into its blocked layout for every call, forward and backward (measured: a 2560->1280 3x3
# convolution adds its 112.5 MiB weight to the process per call, a Linear nothing). The counter adds
# that copy to the live bytes at each convolution (`conv_workspace`) when the run is on a CPU. GPUs
# (cuDNN workspaces) are not modelled.
CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


def tensor_bytes(modules, skip_meta: bool = False) -> int:
    """Bytes of the distinct parameter and buffer storages of `modules` (shared tensors count once;
    with `skip_meta`, tensors on the meta device, which hold no memory, do not count)."""
    seen, total = set(), 0
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            if skip_meta and tensor.device.type == "meta":
                continue
            key = (tensor.device.type, tensor.untyped_storage()._cdata if tensor.device.type != "meta" else id(tensor))
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class MemoryEstimate:
    base_weights: int
    lora_weights: int
    lora_gradients: int
    optimizer_state: int
    activations: int
    caches_host: int
    details: dict = field(default_factory=dict)

    @property
    def training_total(self) -> int:
        return self.base_weights + self.lora_weights + self.optimizer_state + self.lora_gradients + self.activations

    @property
    def accelerator_total(self) -> int:
        """The larger of the training phase and the set-up phase (all weights, before the text
        encoders are freed when their outputs are cached)."""
        return max(self.training_total, self.details.get("setup_total", 0))

    def as_dict(self) -> dict:
        return {"base_weights": self.base_weights, "lora_weights": self.lora_weights, "lora_gradients": self.lora_gradients,
                "optimizer_state": self.optimizer_state, "activations": self.activations, "caches_host": self.caches_host,
                "accelerator_total": self.accelerator_total, **self.details}

    def lines(self) -> list[str]:
        d = self.details
        rows = [
            ("base weights (frozen UNet" + ("" if d.get("vae_freed") else ", VAE") + ("" if d.get("text_encoders_freed") else ", text encoders")
             + (", fp8 UNet" if d.get("fp8_unet") else "") + ")", self.base_weights),
            ("LoRA weights", self.lora_weights),
            ("LoRA gradients", self.lora_gradients),
            (f"optimizer state ({d.get('optimizer')})", self.optimizer_state),
            (f"activations (batch {d.get('batch_size')}, {d.get('resolution')}, checkpointing "
             f"{'on' if d.get('gradient_checkpointing') else 'off'})", self.activations),
        ]
        out = [f"estimated peak accelerator memory: {self.accelerator_total / MIB:,.0f} MiB"]
        out += [f"  {name:<66} {value / MIB:>10,.1f} MiB" for name, value in rows]
        freed = [name for name, key in (("text encoders", "text_encoders_freed"), ("VAE", "vae_freed")) if d.get(key)]
        if d.get("conv_workspace"):
            out.append(f"  (activations include the CPU's per-call copy of each convolution weight, up to {d['conv_workspace'] / MIB:,.1f} MiB)")
        if freed:
            out.append(f"  ({' and '.join(freed)} freed after caching; set-up phase with them: {d['setup_total'] / MIB:,.1f} MiB)")
        out.append(f"  {'caches in host memory (latents, text-encoder outputs)':<66} {self.caches_host / MIB:>10,.1f} MiB")
        out.append(f"  ({d.get('lora_parameters', 0):,} trainable parameters in {d.get('lora_modules', 0)} modules; "
                   "estimated from shapes on the meta device; calibrated on CPU, GPU accuracy unverified)")
        return out


# --- models on the meta device -------------------------------------------------------------------
def _configs(path: Path) -> tuple[dict, dict, dict, dict]:
    from library.models import sdxl_architecture as arch

    if path.is_dir():
        def read(name):
            config_file = path / name / "config.json"
            if not config_file.is_file():
                raise UserError(f"{config_file}: not found; --estimate_memory needs the diffusers folder's configs")
            return {k: v for k, v in json.loads(config_file.read_text(encoding="utf-8")).items() if not k.startswith("_")}
        return read("unet"), read("text_encoder"), read("text_encoder_2"), read("vae")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path}: --estimate_memory reads tensor shapes from a .safetensors file or a diffusers folder")
    from library.models.checkpoint_file import read_shapes

    groups = arch.split_checkpoint_shapes(read_shapes(path))
    return (arch.infer_unet_config(groups["unet"]), arch.infer_te1_config(groups["te1"]), arch.infer_te2_config(groups["te2"]),
            arch.infer_vae_config(groups["vae"]))


def meta_models(path: str | Path):
    """SDXL components on the meta device, shaped as the checkpoint at `path`."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model not found (pretrained_model_name_or_path)")
    unet_config, te1_config, te2_config, vae_config = _configs(path)
    with torch.device("meta"), init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel(**unet_config)
        te1 = CLIPTextModel(CLIPTextConfig(**te1_config))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_config))
        vae = AutoencoderKL(**vae_config)
    return SimpleNamespace(unet=unet, text_encoders=[te1, te2], text_encoder1=te1, text_encoder2=te2, vae=vae)


def _latent_cache_bytes(args, items: int) -> int:
    width, height = args.resolution or (1024, 1024)
    per_image = 4 * (height // 8) * (width // 8) * 4
    return items * per_image * (2 if args.flip_aug else 1)


def _text_cache_bytes(args, items: int, context_width: int, pooled_width: int) -> int:
    tokens = 77 * max(1, (args.max_token_length or 75) // 75)
    return items * (tokens * context_width + pooled_width) * 4


def count_dataset_items(args) -> int | None:
    """Training samples (without repeats) the config describes, or None when it cannot be read."""
    try:
        from library.data.images import SkipLog
        from library.training.config.dataset_config import dataset_specs
        from library.training.inputs.train_items import build_items

        return len(build_items(dataset_specs(args), SkipLog(), []))
    except Exception:  # the estimate must not fail on a dataset problem; training will report it
        return None


@contextlib.contextmanager
def flash_attention_on_meta():
    """On meta tensors `scaled_dot_product_attention` falls back to its math form, which keeps the
    (tokens x tokens) attention map per head for backward: 335 MiB per bf16 self-attention at SDXL's
    1024 px. The real kernels keep only the output and a logsumexp (flash attention on the CPU; flash
    or memory-efficient attention on a GPU), so during the meta pass attention without a mask runs
    the CPU flash kernel's meta implementation, which allocates what those kernels allocate."""
    original = torch.nn.functional.scaled_dot_product_attention

    def flash(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is not None or kwargs or query.device.type != "meta":
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal, scale=scale)[0]

    torch.nn.functional.scaled_dot_product_attention = flash
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def working_memory(model, network, args, dtype: torch.dtype, train_unet: bool, train_text_encoder: bool,
                   conv_workspace: bool = False) -> tuple[int, int, int]:
    """(peak bytes of one training forward + backward on meta tensors, bytes of LoRA gradients, the
    largest convolution workspace counted)."""
    width, height = args.resolution or (1024, 1024)
    batch = args.train_batch_size
    unet = model.unet
    tokens = 77 * max(1, (args.max_token_length or 75) // 75)
    te1_width = model.text_encoder1.config.hidden_size
    te2_width = model.text_encoder2.config.hidden_size
    if args.gradient_checkpointing:  # as the trainer does it (the policy decides what is kept)
        from library.training.residency.checkpointing import enable_unet_checkpointing

        # (offloading is not modelled: it moves block inputs to the host, which this estimate still counts)
        enable_unet_checkpointing(unet, False, torch.device("cpu"), [], args.gradient_checkpointing_policy)
        unet.train()
        if train_text_encoder:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
                encoder.train()
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0())
    counter = AllocationCounter(conv_workspace)
    meta = torch.device("meta")
    with counter, flash_attention_on_meta():
        latents = torch.empty(batch, 4, height // 8, width // 8, dtype=torch.float32, device=meta)
        noise = torch.empty_like(latents)
        if train_text_encoder:
            ids = torch.zeros(batch, tokens, dtype=torch.long, device=meta)
            with torch.set_grad_enabled(True):
                hidden1 = model.text_encoder1(ids, output_hidden_states=True).hidden_states[-2]
                out2 = model.text_encoder2(ids, output_hidden_states=True)
                context = torch.cat([hidden1, out2.hidden_states[-2]], dim=-1)
                pooled = out2.text_embeds
        else:
            context = torch.empty(batch, tokens, te1_width + te2_width, device=meta)
            pooled = torch.empty(batch, te2_width, device=meta)
        time_ids = torch.empty(batch, 6, device=meta)
        timesteps = torch.zeros(batch, dtype=torch.long, device=meta)
        noisy = latents * 0.5 + noise * 0.5
        if True:  # under mixed precision the pass runs wholly in the half dtype (see estimate_memory)
            prediction = unet(noisy.to(dtype), timesteps, context.to(dtype),
                              added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        loss.backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in network.parameters() if p.grad is not None)
    return counter.peak, grads, counter.largest_workspace


class _MetaExceptSmallData(DeviceContext):
    """New tensors on the meta device (no memory, no init time), except small integer tensors built from
    a shape (`torch.tensor(kernel_size).prod().item()` in LyCORIS' LoHa/LoKr needs a real value)."""

    def __init__(self):
        super().__init__(torch.device("meta"))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (func in (torch.tensor, torch.as_tensor) and (kwargs or {}).get("device") is None and args
                and isinstance(args[0], (tuple, list)) and all(isinstance(v, int) for v in args[0])):
            return func(*args, **(kwargs or {}))
        return super().__torch_function__(func, types, args, kwargs)


def estimate_memory(args, images: int | None = None) -> MemoryEstimate:
    """The estimate for a resolved training config (nothing is loaded but file headers); `images`:
    the dataset's image count when the caller knows it (otherwise the dataset is scanned)."""
    from library.lora.network_modules import import_network_module
    from library.lora.network_args import split_network_args
    from library.training.residency.placement import PrecisionPlan, released_after_caching

    # the trainer's own precision plan (mixed_precision runs as configured on every device)
    plan = PrecisionPlan.from_args(args, args.mixed_precision)
    dtype = plan.compute_dtype
    model = meta_models(args.pretrained_model_name_or_path)
    for name, module in (("unet", model.unet), ("text_encoder1", model.text_encoder1), ("text_encoder2", model.text_encoder2),
                         ("vae", model.vae)):
        module.requires_grad_(False)
        module.eval()
        plan.store(name, module, torch.device("meta"))  # each component's storage dtypes, as the trainer places it
    train_unet = not args.network_train_text_encoder_only
    train_text_encoder = not args.network_train_unet_only
    module = import_network_module(args.network_module or "networks.lora")
    with _MetaExceptSmallData():
        # without dropouts: they hold no memory worth counting, and LyCORIS draws them with .item() on the
        # weights' device (meta here), which only works on real tensors
        kwargs = {k: v for k, v in split_network_args(args.network_args).items() if k not in ("rank_dropout", "module_dropout")}
        network = module.create_network(1.0, args.network_dim or 4, args.network_alpha, model.vae, model.text_encoders, model.unet,
                                        **kwargs)
        network.apply_to(model.text_encoders, model.unet, train_text_encoder, train_unet)
    if args.gradient_checkpointing:
        network.enable_gradient_checkpointing()
    prepared = network.prepare_optimizer_params(args.text_encoder_lr if train_text_encoder else None, args.unet_lr, args.learning_rate)
    groups = prepared[0] if isinstance(prepared, tuple) else prepared
    trainable = [p for group in groups for p in group["params"]]
    for param in network.parameters():
        param.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    lora_bytes = sum(p.numel() * p.element_size() for p in network.parameters())
    trainable_count = sum(p.numel() for p in trainable)
    optimizer = (args.optimizer_type or "AdamW").lower().replace("_", "")
    state_bytes = OPTIMIZER_STATE_BYTES.get(optimizer, 8) * trainable_count
    base = tensor_bytes([model.unet, *model.text_encoders, model.vae])
    text_encoder_bytes = tensor_bytes(model.text_encoders)
    caching_text = bool(args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk)
    released = released_after_caching(latents_cached=bool(args.cache_latents or args.cache_latents_to_disk), text_cached=caching_text,
                                      samples=bool(args.sample_prompts), validation=bool(args.validation_split))  # as the trainer
    text_encoders_freed, vae_freed = "text_encoder1" in released, "vae" in released
    full_half = bool(args.full_fp16 or args.full_bf16) and dtype != torch.float32
    if dtype != torch.float32:
        # Meta tensors have no autocast: run the pass in the half dtype (what autocast produces for
        # matmuls and convolutions); fp32 LoRA gradients are twice the half ones.
        network.to(dtype)
    from library.training.residency.placement import compute_device

    device_type = compute_device().type
    peak, grads, workspace = working_memory(model, network, args, dtype, train_unet, train_text_encoder, device_type == "cpu")
    if dtype != torch.float32 and not full_half:
        peak, grads = peak + grads, grads * 2
    if full_half:
        lora_bytes //= 2
        if args.full_fp16:  # the optimizer steps fp32 master copies (library/training/residency/loss_scaling.py): + 4 bytes each
            state_bytes += 4 * trainable_count
        else:  # full_bf16: the optimizer's state is bf16 like the weights, as in kohya
            state_bytes //= 2
    items = (count_dataset_items(args) or 0) if images is None else images
    caches = 0
    if args.cache_latents or args.cache_latents_to_disk:
        caches += _latent_cache_bytes(args, items)
    if args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk:
        caches += _text_cache_bytes(args, items, model.text_encoder1.config.hidden_size + model.text_encoder2.config.hidden_size,
                                    model.text_encoder2.config.projection_dim)
    width, height = args.resolution or (1024, 1024)
    details = {"optimizer": args.optimizer_type or "AdamW", "batch_size": args.train_batch_size, "resolution": f"{width}x{height}",
               "gradient_checkpointing": bool(args.gradient_checkpointing), "precision": args.mixed_precision,
               "lora_parameters": trainable_count, "lora_modules": len(getattr(network, "loras", [])) or None,
               "dataset_items": items, "text_encoders_freed": text_encoders_freed, "vae_freed": vae_freed,
               "fp8_unet": bool(args.fp8_base or args.fp8_base_unet), "setup_total": base + lora_bytes,
               "device": device_type, "conv_workspace": workspace}
    held = base - (text_encoder_bytes if text_encoders_freed else 0) - (tensor_bytes([model.vae]) if vae_freed else 0)
    return MemoryEstimate(held, lora_bytes, grads, state_bytes, max(peak - grads, 0), caches, details)


def print_estimate(args) -> None:
    for line in estimate_memory(args).lines():
        print(line)
