"""Named optimizer settings (diffusers' names) as conveniences over kohya's `optimizer_args`.

    prodigy_beta3 = 0.99            ->  optimizer_args "beta3=0.99"
    prodigy_decouple = true         ->  "decouple=True"
    prodigy_use_bias_correction     ->  "use_bias_correction=..."
    prodigy_safeguard_warmup        ->  "safeguard_warmup=..."
    adam_beta1 / adam_beta2         ->  "betas=(b1,b2)" (the one not given keeps the optimizer's default)
    adam_weight_decay               ->  "weight_decay=..."

The named options are real TOML booleans and floats. Setting one thing both ways (named option and
optimizer_args) is a config error, never a silent precedence rule.
"""
from __future__ import annotations

import inspect

from library.errors import UserError
from library.training.optim.optimizer_classes import parse_kwargs

PRODIGY_OPTIONS = {
    "prodigy_beta3": "beta3",
    "prodigy_decouple": "decouple",
    "prodigy_use_bias_correction": "use_bias_correction",
    "prodigy_safeguard_warmup": "safeguard_warmup",
}
GENERAL_OPTIONS = {"adam_weight_decay": "weight_decay"}
BETA_OPTIONS = ("adam_beta1", "adam_beta2")
ADAM_LIKE_LR = 0.1  # Prodigy's lr multiplies its own step estimate: ~1.0; below this it looks like an Adam rate


def _is_prodigy(args) -> bool:
    name = (args.optimizer_type or "").lower()
    return name == "prodigy" or name.endswith(".prodigy")


def check_optimizer_options(args, sources: dict, notices: list) -> None:
    """Config-time checks: conflicts with optimizer_args, Prodigy-only options, Prodigy learning rates."""
    def where(name):
        return sources.get(name, "command line")

    given = parse_kwargs(args.optimizer_args, "optimizer_args")
    for option, keyword in {**PRODIGY_OPTIONS, **GENERAL_OPTIONS}.items():
        if getattr(args, option) is not None and keyword in given:
            raise UserError(f"{where(option)}: {option} and optimizer_args \"{keyword}={given[keyword]}\" set the same thing; keep one")
    for option in BETA_OPTIONS:
        if getattr(args, option) is not None and "betas" in given:
            raise UserError(f"{where(option)}: {option} and optimizer_args \"betas={given['betas']}\" set the same thing; keep one")
    if args.optimizer_schedulefree_wrapper and (args.optimizer_type or "").lower().endswith("schedulefree"):
        notices.append(f"{where('optimizer_schedulefree_wrapper')}: {args.optimizer_type} is schedule-free already; "
                       "optimizer_schedulefree_wrapper is not applied")
    prodigy = _is_prodigy(args)
    for option in PRODIGY_OPTIONS:
        if getattr(args, option) is not None and not prodigy:
            raise UserError(f"{where(option)}: {option} applies to optimizer_type = \"Prodigy\" only (optimizer_type is {args.optimizer_type or 'AdamW'!r})")
    if prodigy:
        _check_prodigy_rates(args, where, notices)


def _group_rates(args) -> dict[str, float]:
    """The learning rate of every parameter group the trainer will create."""
    rates = {}
    if not args.network_train_text_encoder_only:
        rates["unet_lr" if args.unet_lr is not None else "learning_rate"] = args.unet_lr if args.unet_lr is not None else args.learning_rate
    if not args.network_train_unet_only or args.train_text_encoder_ti:
        te = args.text_encoder_lr
        values = list(te) if isinstance(te, (list, tuple)) else [te]
        for value in values:
            rates["text_encoder_lr" if value is not None else "learning_rate"] = value if value is not None else args.learning_rate
    return rates


def _check_prodigy_rates(args, where, notices: list) -> None:
    ratios = {name: getattr(args, name) for name in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")}
    ratios.update(dict(item.split("=", 1) for item in (args.network_args or []) if item.split("=", 1)[0].strip().startswith("loraplus_")))
    if any(value is not None and float(value) != 1.0 for value in ratios.values()):
        raise UserError("LoRA+ (loraplus_*_ratio) gives the up matrices a different learning rate, which Prodigy does not allow "
                        "(one learning rate for every group); remove the LoRA+ ratio or use another optimizer")
    rates = _group_rates(args)
    nonzero = {name: value for name, value in rates.items() if value}
    if len(set(nonzero.values())) > 1:
        listed = ", ".join(f"{name} = {value:g}" for name, value in nonzero.items())
        raise UserError(
            f"Prodigy needs the same learning rate in every parameter group (or 0), got {listed}; "
            "Prodigy estimates each step size itself: set them all to 1.0"
        )
    low = {name: value for name, value in nonzero.items() if value < ADAM_LIKE_LR}
    if low:
        name, value = next(iter(low.items()))
        notices.append(
            f"{where(name)}: {name} = {value:g} looks like an Adam learning rate; Prodigy's learning rate multiplies "
            "its own estimated step size and is normally 1.0"
        )


def named_optimizer_kwargs(args, optimizer_class) -> dict:
    """Keyword arguments for `optimizer_class` from the named options that are set."""
    kwargs = {}
    for option, keyword in {**PRODIGY_OPTIONS, **GENERAL_OPTIONS}.items():
        if getattr(args, option) is not None:
            kwargs[keyword] = getattr(args, option)
    beta1, beta2 = (getattr(args, option) for option in BETA_OPTIONS)
    parameters = _parameters(optimizer_class)
    if beta1 is not None or beta2 is not None:
        default = parameters.get("betas")
        if default is None:
            raise UserError(f"adam_beta1/adam_beta2: {optimizer_class.__name__} has no betas; remove them")
        default_betas = default.default if default.default is not inspect.Parameter.empty else (0.9, 0.999)
        kwargs["betas"] = (beta1 if beta1 is not None else default_betas[0], beta2 if beta2 is not None else default_betas[1])
    missing = [keyword for keyword in kwargs if keyword not in parameters and not _takes_var_kwargs(parameters)]
    if missing:
        raise UserError(f"{optimizer_class.__name__} does not take {', '.join(missing)}; remove the matching named option")
    return kwargs


def _parameters(optimizer_class) -> dict:
    try:
        return dict(inspect.signature(optimizer_class.__init__).parameters)
    except (TypeError, ValueError):
        return {}


def _takes_var_kwargs(parameters: dict) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
