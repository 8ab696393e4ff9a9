"""Schedule-free optimizers (AdamW/SGD/RAdamScheduleFree, or any optimizer inside
schedulefree.ScheduleFreeWrapper via optimizer_schedulefree_wrapper).

They keep two points: steps are taken at y ("train" mode) and the averaged weights x ("eval" mode)
are the ones to sample, validate and save. As in kohya the trainer switches to train mode for
steps and to eval mode around sampling, validation and saving (the saved LoRA and a saved state
hold x); a resumed state is loaded in eval mode and switched back to train. The learning-rate
schedule is constant, as kohya's dummy scheduler: these optimizers warm up themselves
(optimizer_args "warmup_steps=...").
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from library.errors import UserError
from library.training.optimizers import is_schedule_free, parse_kwargs


def wrap_schedule_free(optimizer, args):
    """`optimizer` inside ScheduleFreeWrapper when optimizer_schedulefree_wrapper is set (and the
    optimizer is not schedule-free already)."""
    if not args.optimizer_schedulefree_wrapper or is_schedule_free(optimizer):
        return optimizer
    import schedulefree

    kwargs = parse_kwargs(args.schedulefree_wrapper_args, "schedulefree_wrapper_args")
    try:
        return schedulefree.ScheduleFreeWrapper(optimizer, **kwargs)
    except TypeError as error:
        raise UserError(f"schedulefree_wrapper_args: {error} (ScheduleFreeWrapper takes momentum, weight_decay_at_y, "
                        "weight_lr_power, r)") from None


def constant_schedule(optimizer):
    """kohya's scheduler for schedule-free optimizers: the learning rate never changes."""
    return torch.optim.lr_scheduler.LambdaLR(getattr(optimizer, "base", optimizer), lambda _: 1.0)


class ScheduleFreeModes:
    """train()/eval() of a schedule-free optimizer; does nothing for any other optimizer."""

    def __init__(self, optimizer):
        self.optimizer = optimizer if is_schedule_free(optimizer) else None

    def train(self) -> None:
        if self.optimizer is not None:
            self.optimizer.train()

    def eval(self) -> None:
        if self.optimizer is not None:
            self.optimizer.eval()

    @contextmanager
    def evaluating(self):
        """Eval mode (the averaged weights) inside the block, train mode again after it."""
        self.eval()
        try:
            yield
        finally:
            self.train()
