"""Loss scaling for fp16 training, with fp32 master weights under full_fp16.

fp16 gradients of a diffusion loss are small enough to underflow (fp16 has nothing below 6e-8), so
the loss is multiplied by a dynamic scale before backward (torch.amp.GradScaler: start at 2^16,
halve and skip the step on inf/NaN, double after 2000 clean steps) and the gradients are divided
by it before the optimizer sees them.

With `full_fp16` the trainable weights themselves are fp16. GradScaler refuses to unscale fp16
gradients (unscaling in fp16 would underflow exactly what scaling saved), and an optimizer
stepping fp16 weights loses small updates and divides by an epsilon that is 0 in fp16. So, as
Apex O2, Megatron-LM and DeepSpeed's fp16 mode do, the optimizer works on fp32 master copies: the
scaled fp16 gradients are copied into fp32 and unscaled there, clipped, stepped, and the masters
are copied back into the fp16 weights the model runs with. The masters cost 4 bytes per trainable
parameter (a few MB to a few hundred MB for a LoRA), the forward and backward stay fully fp16.

`full_bf16` needs neither: bf16 has fp32's range, and as in kohya its optimizer steps the bf16
weights directly.
"""
from __future__ import annotations

import torch


class LossScaling:
    """Scaled backward, unscaled (fp32 master) gradients for the optimizer, and its resumable state.

    `groups` are the optimizer's parameter groups as the network gave them; `optimizer_groups()`
    returns the ones to build the optimizer with (fp32 masters in place of fp16 parameters)."""

    def __init__(self, device_type: str, groups: list[dict], masters: bool):
        self.scaler = torch.amp.GradScaler(device_type)
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = []  # (model fp16 param, fp32 master)
        self._groups = []
        for group in groups:
            params = []
            for param in group["params"]:
                if masters and param.dtype == torch.float16:
                    master = torch.nn.Parameter(param.detach().float().clone())
                    self.pairs.append((param, master))
                    params.append(master)
                else:
                    params.append(param)
            self._groups.append({**group, "params": params})

    def optimizer_groups(self) -> list[dict]:
        return self._groups

    @property
    def optimized(self) -> list[torch.nn.Parameter]:
        """The tensors the optimizer steps (masters where there are some): clip these."""
        return [p for group in self._groups for p in group["params"]]

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def unscale_(self, optimizer) -> None:
        """Move the model's scaled fp16 gradients into the fp32 masters, then unscale in fp32."""
        for param, master in self.pairs:
            master.grad = None if param.grad is None else param.grad.float()
            param.grad = None
        self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        """Optimizer step unless a gradient overflowed (then the scale halves); True when it stepped."""
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        self.masters_to_model()
        return self.scaler.get_scale() >= scale_before

    @torch.no_grad()
    def masters_to_model(self) -> None:
        for param, master in self.pairs:
            param.copy_(master)

    @torch.no_grad()
    def model_to_masters(self) -> None:
        """After something changed the model's weights directly (e.g. scale_weight_norms)."""
        for param, master in self.pairs:
            master.copy_(param)

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "masters": [master.detach().cpu() for _, master in self.pairs]}

    def load_state_dict(self, state: dict) -> None:
        if "scaler" not in state:  # a state saved before master weights existed: GradScaler's own dict
            state = {"scaler": state}
        self.scaler.load_state_dict(state["scaler"])
        with torch.no_grad():
            for (_, master), saved in zip(self.pairs, state.get("masters", [])):
                master.copy_(saved)
        self.masters_to_model()


def loss_scaling(mixed_precision: str, full_fp16: bool, device_type: str, groups: list[dict]) -> LossScaling | None:
    """A LossScaling for fp16 training (masters with full_fp16); None for fp32 and bf16."""
    if mixed_precision != "fp16":
        return None
    return LossScaling(device_type, groups, masters=full_fp16)
