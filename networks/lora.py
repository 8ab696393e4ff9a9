"""LoRA / LoCon for SDXL in the kohya network-module contract (`network_module = "networks.lora"`).

Targets are kohya's: every Linear and 1x1 conv inside UNet Transformer2DModel blocks and CLIP
attention/MLP ("LierLa": 722 UNet + 264 text-encoder modules on SDXL). `conv_dim` adds the
ResnetBlock2D / Downsample2D / Upsample2D blocks ("C3Lier"): their 3x3 convs at conv_dim, and
their Linear emb_layers_1 and 1x1 skip_connection at network_dim, as kohya does. Modules are named
with their file names from the start (`lora_unet_<SAI path>`, `lora_te1_text_model_...`), so the
state dict is the file.

Deliberate differences from kohya: unknown or malformed network_args are errors; modules in
blocks whose block lr weight is 0 are not created (they could never train); text_encoder_lr may
be one value or [te1, te2].
"""
from __future__ import annotations

import logging
from collections import defaultdict

import torch
from torch import nn

from library.errors import UserError
from library.lora import network_args as na
from library.lora import weights_math
from library.lora.file_io import load_lora_for_model, save_lora
from library.lora.modules import LoRAModule
from library.lora.naming import ModelNames, group_by_module
from library.lora.targets import (
    TEXT_ENCODER_TARGET_MODULES,
    UNET_TARGET_MODULES,
    UNET_TARGET_MODULES_CONV3X3,
    is_linear_or_1x1,
    target_children,
)

logger = logging.getLogger(__name__)


ARG_PARSERS = {
    "conv_dim": na.as_int, "conv_alpha": na.as_float,
    "dropout": na.as_probability, "rank_dropout": na.as_probability, "module_dropout": na.as_probability,
    "block_dims": na.block_ints, "block_alphas": na.block_floats,
    "conv_block_dims": na.block_ints, "conv_block_alphas": na.block_floats,
    "down_lr_weight": na.down_up_lr_weight, "mid_lr_weight": na.mid_lr_weight, "up_lr_weight": na.down_up_lr_weight,
    "block_lr_zero_threshold": na.as_float,
    "loraplus_lr_ratio": na.as_float, "loraplus_unet_lr_ratio": na.as_float,
    "loraplus_text_encoder_lr_ratio": na.as_float,
}


def _as_list(text_encoder) -> list:
    if text_encoder is None:
        return []
    return list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder]


class LoRANetwork(nn.Module):
    def __init__(self, text_encoders, unet, multiplier=1.0, lora_dim=4, alpha=1.0, dropout=None, rank_dropout=None,
                 module_dropout=None, conv_lora_dim=None, conv_alpha=None, block_dims=None, block_alphas=None,
                 conv_block_dims=None, conv_block_alphas=None, block_lr_weight=None, modules_dim=None,
                 modules_alpha=None, module_class=LoRAModule, module_kwargs=None):
        super().__init__()
        self.multiplier = multiplier
        self.lora_dim, self.alpha = lora_dim, alpha
        self.conv_lora_dim, self.conv_alpha = conv_lora_dim, conv_alpha
        self.block_lr_weight = block_lr_weight
        self.loraplus_lr_ratio = self.loraplus_unet_lr_ratio = self.loraplus_text_encoder_lr_ratio = None
        text_encoders = _as_list(text_encoders)
        self.names = ModelNames(unet, text_encoders)
        name_of = {(ref.component, ref.path): name for name, ref in self.names.refs.items()}
        make = lambda name, org, dim, a: module_class(  # noqa: E731
            name, org, multiplier, dim, a, dropout=dropout, rank_dropout=rank_dropout,
            module_dropout=module_dropout, **(module_kwargs or {}))

        self.text_encoder_loras, self.unet_loras = [], []
        if modules_dim is not None:  # from a file: exactly the modules it has
            for name, dim in modules_dim.items():
                ref = self.names.ref(name)
                lora = make(name, ref.module, dim, modules_alpha.get(name))
                (self.unet_loras if ref.component == "unet" else self.text_encoder_loras).append(lora)
        else:
            for index, te in enumerate(text_encoders, start=1):
                for path, org in target_children(te, TEXT_ENCODER_TARGET_MODULES):
                    self.text_encoder_loras.append(make(name_of[(f"te{index}", path)], org, lora_dim, alpha))
            with_conv = conv_lora_dim is not None or conv_block_dims is not None
            classes = UNET_TARGET_MODULES + (UNET_TARGET_MODULES_CONV3X3 if with_conv else ())
            for path, org in target_children(unet, classes):
                name = name_of[("unet", path)]
                block = na.sdxl_block_index(name)
                if block_lr_weight is not None and block_lr_weight[block] == 0:
                    continue
                small = is_linear_or_1x1(org)
                if block_dims is not None:
                    dim, a = (block_dims[block], block_alphas[block]) if small else (
                        (conv_block_dims[block], conv_block_alphas[block]) if conv_block_dims else (0, None))
                else:
                    dim, a = (lora_dim, alpha) if small else (conv_lora_dim or 0, conv_alpha)
                if dim:
                    self.unet_loras.append(make(name, org, dim, a))
        for lora in self.text_encoder_loras + self.unet_loras:
            if lora.lora_name in self._modules:
                raise RuntimeError(f"duplicated LoRA name {lora.lora_name}")
            self.add_module(lora.lora_name, lora)
        logger.info("LoRA: %d text-encoder and %d UNet modules", len(self.text_encoder_loras), len(self.unet_loras))

    @property
    def loras(self) -> list:
        return self.text_encoder_loras + self.unet_loras

    # --- the kohya contract -------------------------------------------------------------------
    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = multiplier
        for lora in self.loras:
            lora.multiplier = multiplier

    def set_loraplus_lr_ratio(self, ratio=None, unet_ratio=None, text_encoder_ratio=None) -> None:
        self.loraplus_lr_ratio = ratio
        self.loraplus_unet_lr_ratio = unet_ratio
        self.loraplus_text_encoder_lr_ratio = text_encoder_ratio

    def apply_to(self, text_encoder=None, unet=None, apply_text_encoder=True, apply_unet=True) -> None:
        if not apply_text_encoder:
            self._drop(self.text_encoder_loras)
            self.text_encoder_loras = []
        if not apply_unet:
            self._drop(self.unet_loras)
            self.unet_loras = []
        for lora in self.loras:
            lora.apply_to()

    def _drop(self, loras) -> None:
        for lora in loras:
            del self._modules[lora.lora_name]

    def restore(self) -> None:
        for lora in self.loras:
            lora.restore()

    def is_mergeable(self) -> bool:
        return True

    @torch.no_grad()
    def merge_to(self, text_encoder=None, unet=None, weights_sd=None, dtype=None, device=None) -> None:
        """Add every module's delta into the model weights (from `weights_sd`, or the network's own)."""
        groups = group_by_module(self.names.normalise(weights_sd)[0]) if weights_sd is not None else None
        for lora in self.loras:
            group = groups.get(lora.lora_name) if groups is not None else None
            if groups is not None and group is None:
                continue
            lora.merge_to(group)

    def prepare_optimizer_params(self, text_encoder_lr=None, unet_lr=None, default_lr=None):
        """(param groups, descriptions); LoRA+ puts lora_up in its own group at lr x ratio."""
        self.requires_grad_(True)
        groups, descriptions = [], []

        def assemble(loras, lr, ratio, description):
            main, plus = [], []
            for lora in loras:
                for name, param in lora.named_parameters():
                    (plus if ratio is not None and "lora_up" in name else main).append(param)
            for params, factor, suffix in ((main, 1.0, ""), (plus, ratio, " plus")):
                if not params:
                    continue
                group = {"params": params}
                if lr is not None:
                    group["lr"] = lr * factor
                    if group["lr"] == 0:
                        continue  # a zero learning rate trains nothing; keep it out of the optimizer
                groups.append(group)
                descriptions.append(description + suffix)

        if isinstance(text_encoder_lr, (list, tuple)):
            te_lrs = list(text_encoder_lr) + [text_encoder_lr[0]] * (2 - len(text_encoder_lr))
        else:
            te_lrs = [text_encoder_lr, text_encoder_lr]
        te_lrs = [default_lr if lr is None else lr for lr in te_lrs]
        te_ratio = self.loraplus_text_encoder_lr_ratio or self.loraplus_lr_ratio
        if te_lrs[0] == te_lrs[1]:
            assemble(self.text_encoder_loras, te_lrs[0], te_ratio, "textencoder")
        else:
            for index in (1, 2):
                loras = [lo for lo in self.text_encoder_loras if lo.lora_name.startswith(f"lora_te{index}_")]
                assemble(loras, te_lrs[index - 1], te_ratio, f"textencoder {index}")

        unet_lr = default_lr if unet_lr is None else unet_lr
        unet_ratio = self.loraplus_unet_lr_ratio or self.loraplus_lr_ratio
        if self.block_lr_weight is None:
            assemble(self.unet_loras, unet_lr, unet_ratio, "unet")
        else:
            by_block = defaultdict(list)
            for lora in self.unet_loras:
                by_block[na.sdxl_block_index(lora.lora_name)].append(lora)
            for block in sorted(by_block):
                lr = None if unet_lr is None else unet_lr * self.block_lr_weight[block]
                assemble(by_block[block], lr, unet_ratio, f"unet_block{block}")
        return groups, descriptions

    def prepare_optimizer_params_with_multiple_te_lrs(self, text_encoder_lr=None, unet_lr=None, default_lr=None):
        """kohya's name for the call that takes text_encoder_lr as [te1, te2]; prepare_optimizer_params does both."""
        return self.prepare_optimizer_params(text_encoder_lr, unet_lr, default_lr)

    def enable_gradient_checkpointing(self) -> None:
        pass  # LoRA modules are tiny; checkpointing is the base model's business

    def prepare_grad_etc(self, text_encoder=None, unet=None) -> None:
        self.requires_grad_(True)

    def on_epoch_start(self, text_encoder=None, unet=None) -> None:
        self.train()

    def on_step_start(self, *args, **kwargs) -> None:
        pass

    def get_trainable_params(self):
        return self.parameters()

    def apply_max_norm_regularization(self, max_norm_value: float, device=None):
        """(keys scaled, mean norm, max norm) after scaling every delta to norm <= max_norm_value."""
        scaled, norms = 0, []
        for lora in self.loras:
            was_scaled, norm = lora.apply_max_norm(max_norm_value)
            scaled += int(was_scaled)
            norms.append(norm)
        if not norms:
            return 0, 0.0, 0.0
        return scaled, sum(norms) / len(norms), max(norms)

    def save_weights(self, file, dtype=None, metadata=None) -> dict:
        return save_lora(file, self.state_dict(), metadata, dtype)

    def load_weights(self, file) -> dict:
        """Load a file (any accepted naming) into this network; modules it lacks are reported."""
        weights_sd, _ = load_lora_for_model(file, self.names)
        own = self.state_dict()
        unexpected = sorted(set(weights_sd) - set(own))
        if unexpected:
            raise UserError(f"{file}: {len(unexpected)} keys are not modules of this network "
                            f"(different network_dim/conv_dim/targets?): {', '.join(unexpected[:10])}")
        wrong = [k for k in weights_sd if weights_sd[k].shape != own[k].shape]
        if wrong:
            raise UserError(f"{file}: shapes differ from this network for {', '.join(wrong[:10])} "
                            "(a different rank?)")
        missing = sorted(set(own) - set(weights_sd))
        self.load_state_dict(weights_sd, strict=False)
        if missing:
            logger.warning("%s: %d network keys not in the file keep their initial values", file, len(missing))
        return {"missing keys": missing}


def _parse_kwargs(kwargs: dict, neuron_dropout=None) -> dict:
    args = na.parse_args(kwargs, ARG_PARSERS, "networks.lora")
    if neuron_dropout is not None and args.get("dropout") is None:
        args["dropout"] = na.as_probability(neuron_dropout)
    return args


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    return build_network(LoRANetwork, multiplier, network_dim, network_alpha, text_encoder, unet, neuron_dropout, kwargs)


def build_network(network_class, multiplier, network_dim, network_alpha, text_encoder, unet, neuron_dropout, kwargs: dict):
    """create_network for LoRANetwork or a subclass (networks.lora_fa)."""
    args = _parse_kwargs(kwargs, neuron_dropout)
    network_dim = 4 if network_dim is None else int(network_dim)
    network_alpha = 1.0 if network_alpha is None else float(network_alpha)
    conv_dim, conv_alpha = args.get("conv_dim"), args.get("conv_alpha")
    if conv_dim is not None:
        conv_alpha = 1.0 if conv_alpha is None else conv_alpha
    block_dims = args.get("block_dims")
    block_alphas = conv_block_dims = conv_block_alphas = None
    if block_dims is not None:
        block_alphas = args.get("block_alphas") or [network_alpha] * na.SDXL_NUM_BLOCKS
        conv_block_dims = args.get("conv_block_dims")
        if conv_block_dims is not None:
            conv_block_alphas = args.get("conv_block_alphas") or [conv_alpha or 1.0] * na.SDXL_NUM_BLOCKS
        elif conv_dim is not None:
            conv_block_dims = [conv_dim] * na.SDXL_NUM_BLOCKS
            conv_block_alphas = [conv_alpha] * na.SDXL_NUM_BLOCKS
    else:
        for key in ("block_alphas", "conv_block_dims", "conv_block_alphas"):
            if args.get(key) is not None:
                raise UserError(f"network_args: {key} needs block_dims")
    block_lr_weight = na.block_lr_weights(args.get("down_lr_weight"), args.get("mid_lr_weight"),
                                          args.get("up_lr_weight"), args.get("block_lr_zero_threshold") or 0.0)
    network = network_class(
        text_encoder, unet, multiplier=multiplier, lora_dim=network_dim, alpha=network_alpha,
        dropout=args.get("dropout"), rank_dropout=args.get("rank_dropout"), module_dropout=args.get("module_dropout"),
        conv_lora_dim=conv_dim, conv_alpha=conv_alpha, block_dims=block_dims, block_alphas=block_alphas,
        conv_block_dims=conv_block_dims, conv_block_alphas=conv_block_alphas, block_lr_weight=block_lr_weight,
    )
    ratios = [args.get(k) for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")]
    if any(r is not None for r in ratios):
        network.set_loraplus_lr_ratio(*ratios)
    return network


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False,
                                **kwargs):
    """(network with exactly the file's modules, ranks and alphas, normalised weights)."""
    return build_network_from_weights(LoRANetwork, multiplier, file, text_encoder, unet, weights_sd, kwargs)


def build_network_from_weights(network_class, multiplier, file, text_encoder, unet, weights_sd, kwargs: dict):
    names = ModelNames(unet, _as_list(text_encoder))
    weights_sd, _ = load_lora_for_model(file if weights_sd is None else weights_sd, names)
    modules_dim, modules_alpha, other = {}, {}, []
    for name, group in group_by_module(weights_sd).items():
        try:
            algo = weights_math.detect_algo(group)
        except weights_math.UnsupportedGroupError:
            algo = "unknown"
        if algo != "lora" or "lora_mid.weight" in group or "dora_scale" in group:
            other.append(name)
            continue
        modules_dim[name] = group["lora_down.weight"].shape[0]
        alpha = group.get("alpha")
        modules_alpha[name] = float(alpha) if alpha is not None else float(modules_dim[name])
    if other:
        raise UserError(f"{file}: {len(other)} modules are not plain LoRA/LoCon (LoHa, LoKr, Tucker or DoRA, e.g. "
                        f"{other[0]}); use network_module = \"lycoris.kohya\" for them")
    args = _parse_kwargs(kwargs)
    network = network_class(text_encoder, unet, multiplier=multiplier, modules_dim=modules_dim,
                          modules_alpha=modules_alpha, dropout=args.get("dropout"),
                          rank_dropout=args.get("rank_dropout"), module_dropout=args.get("module_dropout"))
    network.load_state_dict(weights_sd, strict=False)
    return network, weights_sd
