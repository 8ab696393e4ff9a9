"""Create, load and attach the trainable network through kohya's network-module contract.

`network_module` is any importable module with `create_network(...)` (networks.lora,
networks.dylora, lycoris.kohya, or a user's own); `network_args` reach it as string kwargs, exactly
as kohya passes them.
"""
from __future__ import annotations

from library.errors import UserError
from library.lora.merge import merge_base_weights
from library.lora.network_args import split_network_args
from library.lora.network_modules import import_network_module


_LORAPLUS = ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")


def apply_loraplus_options(network, args, kwargs: dict) -> None:
    """LoRA+ ratios given as options (kohya's way) rather than inside network_args."""
    ratios = [getattr(args, key) for key in _LORAPLUS]
    if all(r is None for r in ratios):
        return
    clash = [key for key in _LORAPLUS if getattr(args, key) is not None and key in kwargs]
    if clash:
        raise UserError(f"{clash[0]} is set both as an option and in network_args; keep one")
    if not hasattr(network, "set_loraplus_lr_ratio"):
        raise UserError(f"{args.network_module} does not support LoRA+ (loraplus_*_ratio)")
    network.set_loraplus_lr_ratio(*ratios)


def merge_configured_base_weights(args, model) -> None:
    """base_weights: LoRA files merged into the base model; done on the fp32 weights as loaded,
    before they are stored in half precision or fp8 (placement.py)."""
    if args.base_weights:
        multipliers = [float(m) for m in (args.base_weights_multiplier or [])]
        merge_base_weights(args.base_weights, multipliers, model.unet, model.text_encoders)


def create_training_network(args, model, train_unet: bool, train_text_encoder: bool):
    if not args.network_module:
        raise UserError('network_module is not set; use network_module = "networks.lora" (or networks.dylora, lycoris.kohya)')
    module = import_network_module(args.network_module)
    kwargs = split_network_args(args.network_args)
    if args.dim_from_weights:
        if not args.network_weights:
            raise UserError("dim_from_weights needs network_weights (the LoRA to take rank and alpha from)")
        network, _ = module.create_network_from_weights(1.0, args.network_weights, model.vae, model.text_encoders, model.unet, **kwargs)
    else:
        network = module.create_network(
            1.0, args.network_dim, args.network_alpha, model.vae, model.text_encoders, model.unet,
            neuron_dropout=args.network_dropout, **kwargs,
        )
    if network is None:
        raise UserError(f"{args.network_module}.create_network returned nothing; check network_args")
    apply_loraplus_options(network, args, kwargs)
    network.apply_to(model.text_encoders, model.unet, train_text_encoder, train_unet)
    if args.network_weights and not args.dim_from_weights:
        network.load_weights(args.network_weights)
    return network, module


def optimizer_param_groups(network, text_encoder_lr, unet_lr, learning_rate, notices: list):
    """kohya's call: a network with prepare_optimizer_params_with_multiple_te_lrs takes text_encoder_lr
    as a list (one per text encoder); any other gets its first value (GUIs write [lr, lr])."""
    if hasattr(network, "prepare_optimizer_params_with_multiple_te_lrs"):
        return network.prepare_optimizer_params_with_multiple_te_lrs(text_encoder_lr, unet_lr, learning_rate)
    if isinstance(text_encoder_lr, (list, tuple)):
        if len(set(text_encoder_lr)) > 1:
            notices.append(f"text_encoder_lr = {list(text_encoder_lr)}: this network takes one text-encoder learning rate; "
                           f"both encoders use {text_encoder_lr[0]} (as in kohya)")
        text_encoder_lr = text_encoder_lr[0] if text_encoder_lr else None
    return network.prepare_optimizer_params(text_encoder_lr, unet_lr, learning_rate)
