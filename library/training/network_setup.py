"""Create, load and attach the trainable network through kohya's network-module contract.

`network_module` is any importable module with `create_network(...)` (networks.lora,
networks.dylora, lycoris.kohya, or a user's own); `network_args` reach it as string kwargs, exactly
as kohya passes them.
"""
from __future__ import annotations

import importlib

from library.errors import UserError

# lycoris.kohya names modules after our in-memory diffusers/transformers layout; this wrapper of
# ours renames to the SAI/text_model_ names every UI reads when saving (see networks/).
MODULE_ALIASES = {"lycoris.kohya": "networks.lycoris_kohya"}


def import_network_module(name: str):
    if not name:
        raise UserError('network_module is not set; use network_module = "networks.lora" (or networks.dylora, lycoris.kohya)')
    target = MODULE_ALIASES.get(name, name)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as error:
        if target != name and error.name and target.startswith(error.name):
            module = importlib.import_module(name)
        else:
            raise UserError(f"network_module {name!r} cannot be imported ({error})") from None
    if not hasattr(module, "create_network"):
        raise UserError(f"network_module {name!r} has no create_network(); it is not a kohya network module")
    return module


def network_kwargs(args) -> dict:
    kwargs = {}
    for item in args.network_args or []:
        if "=" not in item:
            raise UserError(f'network_args: {item!r} is not "key=value"')
        key, value = (part.strip() for part in item.split("=", 1))
        kwargs[key] = value
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        if getattr(args, key) is not None:
            if key in kwargs:
                raise UserError(f"{key} is set both as an option and in network_args; keep one")
            kwargs[key] = str(getattr(args, key))
    return kwargs


def merge_base_weights(module, args, model) -> None:
    """base_weights: LoRAs merged into the frozen model before training (kohya's option)."""
    multipliers = [float(m) for m in (args.base_weights_multiplier or [])]
    for index, path in enumerate(args.base_weights or []):
        multiplier = multipliers[index] if index < len(multipliers) else 1.0
        network, weights = module.create_network_from_weights(multiplier, path, model.vae, model.text_encoders, model.unet, for_inference=True)
        network.merge_to(model.text_encoders, model.unet, weights, None, "cpu")


def create_training_network(args, model, train_unet: bool, train_text_encoder: bool):
    module = import_network_module(args.network_module)
    merge_base_weights(module, args, model)
    kwargs = network_kwargs(args)
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
    network.apply_to(model.text_encoders, model.unet, train_text_encoder, train_unet)
    if args.network_weights and not args.dim_from_weights:
        network.load_weights(args.network_weights)
    return network, module
