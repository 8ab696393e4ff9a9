"""lr_scheduler accepts every schedule the installed transformers and diffusers know (as kohya,
which passes the name to transformers' get_scheduler), and each of them builds and steps."""
from __future__ import annotations

import argparse

import pytest
import torch

from library.errors import UserError
from library.training.config.lr_scheduler_names import LR_SCHEDULERS, NEEDS_A_METRIC, parse_lr_scheduler
from library.training.optim.lr_schedulers import build_lr_scheduler
from library.training.config.options import OPTIONS


def test_names_match_the_installed_libraries():
    from diffusers.optimization import SchedulerType as DiffusersType
    from transformers.trainer_utils import SchedulerType as TransformersType

    known = {t.value for t in TransformersType} | {t.value for t in DiffusersType} | {"adafactor"}
    assert set(LR_SCHEDULERS) | set(NEEDS_A_METRIC) == known


def args_for(name, **overrides):
    values = {option: OPTIONS[option].default for option in OPTIONS}
    values.update(lr_scheduler=name, lr_warmup_steps=2, lr_decay_steps=0.25, learning_rate=1e-3, **overrides)
    if name.startswith("adafactor") or name == "constant":
        values["lr_warmup_steps"] = 0
    if name == "piecewise_constant":
        values["lr_scheduler_args"] = ["step_rules='1:10,0.1'"]
    return argparse.Namespace(**values)


@pytest.mark.parametrize("name", [n for n in LR_SCHEDULERS if not n.startswith("adafactor")])
def test_every_name_builds_and_steps(name):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    scheduler = build_lr_scheduler(args_for(name), optimizer, total_steps=20)
    rates = []
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 <= rate <= 1e-3 + 1e-12 for rate in rates)
    if name not in ("constant", "piecewise_constant"):
        assert len(set(rates)) > 1, name  # the schedule actually moves


def test_adafactor_initial_lr_in_the_name_and_metric_schedules_refused():
    from transformers.optimization import Adafactor

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = Adafactor([parameter], lr=None, relative_step=True, scale_parameter=True, warmup_init=False)
    scheduler = build_lr_scheduler(args_for("adafactor:0.005"), optimizer, total_steps=5)
    assert scheduler.get_lr()[0] == pytest.approx(0.005)
    assert parse_lr_scheduler("adafactor:1e-3") == "adafactor:1e-3"
    with pytest.raises(ValueError, match="steps on a validation metric"):
        parse_lr_scheduler("reduce_lr_on_plateau")


def test_lr_scheduler_type_bare_name_is_torch_and_refuses_warmup():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = build_lr_scheduler(args_for("constant", lr_scheduler_type="StepLR", lr_scheduler_args=["step_size=2", "gamma=0.5"]),
                                   optimizer, total_steps=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.25)
    with pytest.raises(UserError, match="remove lr_warmup_steps"):
        build_lr_scheduler(args_for("linear", lr_scheduler_type="StepLR", lr_scheduler_args=["step_size=2"]), optimizer, 10)
