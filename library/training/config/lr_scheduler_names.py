"""The `lr_scheduler` names kohya accepts: every schedule transformers' get_scheduler builds (kohya
uses transformers' SchedulerType), diffusers' piecewise_constant, and "adafactor" / "adafactor:<lr>".

Kept as a literal so `--help` does not import transformers; tests/test_lr_schedulers_names.py checks
it against the installed transformers and diffusers. The two schedules that need a metric every step
(reduce_lr_on_plateau, greedy) cannot follow a training loss and are refused with that reason.
"""
from __future__ import annotations

LR_SCHEDULERS = (
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt",
    "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "piecewise_constant", "adafactor",
)
NEEDS_A_METRIC = ("reduce_lr_on_plateau", "greedy")


def parse_lr_scheduler(value):
    if not isinstance(value, str):
        raise ValueError(f"expected a scheduler name, got {value!r}")
    name = value.strip()
    if name in LR_SCHEDULERS:
        return name
    if name.startswith("adafactor:"):
        try:
            float(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f'"adafactor:<initial lr>" needs a number after the colon, got {value!r}') from None
        return name
    if name in NEEDS_A_METRIC:
        raise ValueError(f"{name!r} steps on a validation metric, which a training loop on the loss cannot give it; "
                         "use cosine or linear, or lr_scheduler_type with a class of your own")
    raise ValueError(f"{value!r} is not one of {', '.join(LR_SCHEDULERS)}")
