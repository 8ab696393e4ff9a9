"""Learning-rate schedulers by kohya name (any schedule transformers builds, diffusers'
piecewise_constant, adafactor[:lr]) or by class (lr_scheduler_type), with warm-up/decay given as
steps or as a fraction. Schedule-free optimizers get kohya's constant schedule."""
from __future__ import annotations

import importlib

from library.errors import UserError
from library.training.optim.optimizer_classes import parse_kwargs


def steps_from(value, total_steps: int) -> int:
    """lr_warmup_steps / lr_decay_steps: an int is steps, a float below 1 a fraction of all steps."""
    if isinstance(value, float) and value < 1:
        return int(value * total_steps)
    return int(value or 0)


def build_lr_scheduler(args, optimizer, total_steps: int, notices: list | None = None):
    from library.training.optim.optimizer_classes import is_schedule_free
    from library.training.optim.schedule_free import constant_schedule

    if is_schedule_free(optimizer):
        if notices is not None and (args.lr_scheduler not in ("constant", "constant_with_warmup") or args.lr_warmup_steps
                                    or args.lr_scheduler_type):
            notices.append("schedule-free optimizers keep a constant learning rate (as in kohya): lr_scheduler, "
                           "lr_scheduler_type and lr_warmup_steps are not used; warm up with optimizer_args \"warmup_steps=...\"")
        return constant_schedule(optimizer)
    warmup = steps_from(args.lr_warmup_steps, total_steps)
    decay = steps_from(args.lr_decay_steps, total_steps)
    extra = parse_kwargs(args.lr_scheduler_args, "lr_scheduler_args")
    if args.lr_scheduler_type:
        if warmup:
            raise UserError(f"lr_scheduler_type {args.lr_scheduler_type} takes its settings from lr_scheduler_args only; "
                            "remove lr_warmup_steps (kohya refuses it too)")
        # kohya: a bare class name is looked up in torch.optim.lr_scheduler
        module_name, _, class_name = args.lr_scheduler_type.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name or "torch.optim.lr_scheduler"), class_name)
        except (ImportError, AttributeError, ValueError) as error:
            raise UserError(f"lr_scheduler_type {args.lr_scheduler_type}: cannot import ({error})") from None
        try:
            return cls(optimizer, **extra)
        except TypeError as error:
            raise UserError(f"lr_scheduler_args for {args.lr_scheduler_type}: {error}") from None
    name = args.lr_scheduler
    if name.startswith("adafactor"):
        from transformers.optimization import AdafactorSchedule

        # kohya writes the initial lr into the name: "adafactor:1e-3"
        initial_lr = float(name.split(":", 1)[1]) if ":" in name else extra.pop("initial_lr", args.learning_rate)
        return AdafactorSchedule(optimizer, initial_lr)
    from transformers.optimization import get_scheduler

    specific = dict(extra)
    if name == "cosine_with_restarts":
        specific.setdefault("num_cycles", args.lr_scheduler_num_cycles)
    elif name == "polynomial":
        specific.setdefault("power", args.lr_scheduler_power)
    elif name == "inverse_sqrt" and args.lr_scheduler_timescale:
        specific.setdefault("timescale", args.lr_scheduler_timescale)
    elif name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        specific.setdefault("min_lr_rate", args.lr_scheduler_min_lr_ratio or 0.0)
    elif name == "warmup_stable_decay":
        specific.setdefault("num_decay_steps", decay)
        specific.setdefault("min_lr_ratio", args.lr_scheduler_min_lr_ratio or 0.0)
    elif name == "piecewise_constant":
        from diffusers.optimization import get_scheduler as diffusers_get_scheduler

        return diffusers_get_scheduler(name, optimizer, step_rules=specific.get("step_rules"))
    kwargs = {"num_warmup_steps": warmup}
    if name not in ("constant", "constant_with_warmup", "inverse_sqrt"):
        kwargs["num_training_steps"] = total_steps
    try:
        return get_scheduler(name, optimizer, scheduler_specific_kwargs=specific or None, **kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"lr_scheduler {name}: {error}") from None


def lr_logs(optimizer, group_names: list[str] | None) -> dict:
    """The learning rate of each parameter group under kohya's TensorBoard tags (lr/unet,
    lr/textencoder, lr/<group>), and D-adaptation/Prodigy's d*lr where the group has a d."""
    logs = {}
    names = group_names or [f"group{i}" for i in range(len(optimizer.param_groups))]
    for index, group in enumerate(optimizer.param_groups):
        name = names[index] if index < len(names) else f"group{index}"
        tag = {"unet": "lr/unet", "textencoder": "lr/textencoder"}.get(name, f"lr/{name.replace(' ', '_')}")
        logs[tag] = group.get("lr") or 0.0
        if "d" in group:
            logs[f"lr/d*lr/{name.replace(' ', '_')}"] = group["d"] * (group.get("lr") or 0.0)
    return logs
