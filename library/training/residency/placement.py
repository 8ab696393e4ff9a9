"""Where each SDXL component lives and in which dtype: decided here, for the trainer and the caching tools.

Models are read into host memory in their storage dtype (`PrecisionPlan.load_dtypes`: each tensor
converted once as it is read, no fp32 copy of an fp16 file); `Placement.place` then moves a component to the compute
device in its storage dtype with one `.to(device, dtype)` per tensor, so an fp32 copy never sits on
the device (moving first and casting afterwards would hold ~14 GB of fp32 SDXL on the GPU).

Storage dtypes follow kohya's options:
  UNet, text encoders  the mixed-precision dtype (fp32 for "no"); fp8 weights with fp8_base /
                       fp8_base_unet (Linear and Conv2d weights only; see fp8_weights.py)
  VAE                  the mixed-precision dtype, fp32 with no_half_vae
What is no longer needed (the VAE once latents are cached, the text encoders once their outputs
are) leaves the device with `release`, to the meta device, so it holds no memory anywhere.

`events` records every placement, use and release with the component's device and the dtypes of
its floating-point tensors at that moment; tests read it to check the order (the VAE was on the
device in its dtype when latents were cached) and that no base model sat on the device in fp32
under mixed precision. On a CPU-only machine the device is the CPU itself, so the dtypes are what
tells a placed module from one merely loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from library.precisions import DTYPES



@dataclass(frozen=True)
class Event:
    action: str  # "place", "use" or "release"
    component: str  # "unet", "text_encoder1", "text_encoder2", "vae"
    device: str  # e.g. "cpu", "cuda:0", "meta"
    dtypes: tuple[str, ...]  # sorted dtype names of the component's floating-point tensors
    purpose: str  # why: "cache latents", "training", ...


@dataclass(frozen=True)
class PrecisionPlan:
    """The dtypes of one run, decided once from the options."""

    mixed_precision: str = "no"  # "no", "fp16" or "bf16": the autocast dtype of every forward
    unet_fp8: bool = False
    text_encoders_fp8: bool = False
    no_half_vae: bool = False

    @property
    def compute_dtype(self) -> torch.dtype:
        return DTYPES[self.mixed_precision]

    @property
    def autocast(self) -> bool:
        return self.mixed_precision != "no"

    def dtype_of(self, component: str) -> torch.dtype:
        """Storage dtype of a component's non-fp8 tensors (norms, biases, embeddings; all of the VAE)."""
        if component == "vae" and self.no_half_vae:
            return torch.float32
        return self.compute_dtype

    def load_dtypes(self, merging: bool = False) -> dict:
        """The dtype each component is read from its file in (library/models/sdxl_loader.py): its
        storage dtype, so a half-precision run never holds an fp32 copy of the weights (fp8
        weights are quantized from the compute dtype). fp32 while LoRA files are merged into the
        base (base_weights), which must happen before the weights are rounded."""
        if merging:
            return {"unet": torch.float32, "text_encoder": torch.float32, "vae": torch.float32}
        return {"unet": self.dtype_of("unet"), "text_encoder": self.dtype_of("text_encoder1"), "vae": self.dtype_of("vae")}

    def fp8(self, component: str) -> bool:
        return self.unet_fp8 if component == "unet" else (self.text_encoders_fp8 and component.startswith("text_encoder"))

    def store(self, component: str, module, device: torch.device) -> None:
        """Give `module` its storage dtypes on `device`, one move per tensor (fp8 Linear/Conv2d weights
        where planned). The trainer places real weights with it, the memory estimate meta ones."""
        if self.fp8(component):
            from library.training.residency.fp8_weights import store_in_fp8

            store_in_fp8(module, device, self.dtype_of(component))
        else:
            dtype = self.dtype_of(component)
            # naming an unchanged dtype only makes diffusers warn about fp32 modules
            module.to(device, None if floating_dtypes(module) == (str(dtype).removeprefix("torch."),) else dtype)

    @classmethod
    def from_args(cls, args, mixed_precision: str) -> "PrecisionPlan":
        return cls(mixed_precision, bool(args.fp8_base or args.fp8_base_unet), bool(args.fp8_base and not args.fp8_base_unet),
                   bool(args.no_half_vae))


def floating_dtypes(module) -> tuple[str, ...]:
    names = {str(t.dtype).removeprefix("torch.") for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()}
    return tuple(sorted(names))


def device_of(module) -> str:
    tensor = next(iter(list(module.parameters()) + list(module.buffers())), None)
    return "cpu" if tensor is None else str(tensor.device)


@dataclass
class Placement:
    device: torch.device
    plan: PrecisionPlan = field(default_factory=PrecisionPlan)
    events: list[Event] = field(default_factory=list)

    def _record(self, action: str, component: str, module, purpose: str) -> None:
        self.events.append(Event(action, component, device_of(module), floating_dtypes(module), purpose))

    def place(self, component: str, module, purpose: str):
        """Move `module` to the device in its storage dtype (one move per tensor); returns it."""
        if device_of(module) == "meta":
            raise RuntimeError(f"{component} was released and cannot be placed again")
        self.plan.store(component, module, self.device)
        self._record("place", component, module, purpose)
        return module

    def use(self, component: str, module, purpose: str) -> None:
        """Note where `module` is at the moment it is used (e.g. when caching starts)."""
        self._record("use", component, module, purpose)

    def release(self, component: str, module, purpose: str) -> None:
        """The component is not needed again in this run: its weights leave memory (meta device)."""
        module.to("meta")
        self._record("release", component, module, purpose)

    def autocast(self):
        """The autocast context of every forward that mixes base weights with trainable ones."""
        return torch.autocast(self.device.type, dtype=self.plan.compute_dtype, enabled=self.plan.autocast)

    def where(self, action: str, component: str | None = None, purpose: str | None = None) -> list[Event]:
        return [e for e in self.events if e.action == action and component in (None, e.component) and purpose in (None, e.purpose)]


def released_after_caching(latents_cached: bool, text_cached: bool, samples: bool, validation: bool) -> tuple[str, ...]:
    """The components no later step needs once the caches are made: the VAE when every latent is
    cached and no sample is decoded; the text encoders when their outputs are cached and neither
    samples nor validation encode a prompt. The trainer releases them; the memory estimate leaves
    them out of the training phase."""
    released = ("vae",) if latents_cached and not samples else ()
    if text_cached and not (samples or validation):
        released += ("text_encoder1", "text_encoder2")
    return released


def compute_device() -> torch.device:
    """The device a single-process tool computes on: the first GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
