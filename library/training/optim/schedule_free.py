"""Schedule-free optimizers (AdamW/SGD/RAdamScheduleFree, or any optimizer inside
schedulefree.ScheduleFreeWrapper via optimizer_schedulefree_wrapper).

They keep two points: steps are taken at y ("train" mode) and the averaged weights x ("eval" mode)
are the ones to sample, validate and save. As in kohya the trainer switches to train mode for
steps and to eval mode around sampling, validation and saving the LoRA (the file holds x); a
training state is saved in train mode, so a resumed run continues exactly. The learning-rate
schedule is constant, as kohya's dummy scheduler: these optimizers warm up themselves
(optimizer_args "warmup_steps=...").
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from library.errors import UserError
from library.training.optim.optimizer_classes import is_schedule_free, parse_kwargs


def wrap_schedule_free(optimizer, args):
    """`optimizer` inside ScheduleFreeWrapper when optimizer_schedulefree_wrapper is set (and the
    optimizer is not schedule-free already)."""
    if not args.optimizer_schedulefree_wrapper or is_schedule_free(optimizer):
        return optimizer
    kwargs = parse_kwargs(args.schedulefree_wrapper_args, "schedulefree_wrapper_args")
    try:
        return _wrapper_class()(optimizer, **kwargs)
    except TypeError as error:
        raise UserError(f"schedulefree_wrapper_args: {error} (ScheduleFreeWrapper takes momentum, weight_decay_at_y, "
                        "weight_lr_power, r)") from None


def _wrapper_class():
    import schedulefree

    class OwnStateScheduleFreeWrapper(schedulefree.ScheduleFreeWrapper):
        """ScheduleFreeWrapper keeping its `z` buffers in a state of its own.

        The stock wrapper stores `z` in the wrapped optimizer's per-parameter state, so torch's
        AdamW (which initialises a parameter's state only when it is empty) never creates its
        moments and fails at the first step (KeyError 'exp_avg'). state_dict() carries both
        states, so a saved training state resumes.
        """

        def __init__(self, base, **kwargs):
            super().__init__(base, **kwargs)
            self._own_state: dict = {}

        @property
        def state(self):
            return _DefaultDict(self._own_state)

        def _params(self):
            return [p for group in self.param_groups for p in group["params"]]

        def state_dict(self):
            z = [self._own_state.get(p, {}).get("z") for p in self._params()]
            return {"base": self.base.state_dict(), "z": z, "train_mode": self.train_mode}

        def load_state_dict(self, state_dict):
            self.base.load_state_dict(state_dict["base"])
            for p, z in zip(self._params(), state_dict["z"]):
                if z is not None:
                    self._own_state[p] = {"z": z.to(device=p.device, dtype=p.dtype)}
            self.train_mode = state_dict["train_mode"]

    return OwnStateScheduleFreeWrapper


class _DefaultDict:
    """dict view creating {} for a missing parameter, as an optimizer's state does."""

    def __init__(self, data: dict):
        self.data = data

    def __getitem__(self, key):
        return self.data.setdefault(key, {})


def constant_schedule(optimizer):
    """kohya's scheduler for schedule-free optimizers: the learning rate never changes."""
    return torch.optim.lr_scheduler.LambdaLR(getattr(optimizer, "base", optimizer), lambda _: 1.0)


class ScheduleFreeModes:
    """train()/eval() of a schedule-free optimizer; does nothing for any other optimizer.

    Switching back to train mode is a lerp that rounds; the train-mode weights saved by eval() are
    restored exactly instead, so a run that samples or saves follows the same trajectory as one
    that does not, every process stays identical, and a resumed run matches an uninterrupted one.
    """

    def __init__(self, optimizer, on_change=None):
        self.optimizer = optimizer if is_schedule_free(optimizer) else None
        self._train_weights = None
        self.on_change = on_change  # called after the weights changed (full_fp16: copy the fp32 masters into the model)

    def _params(self):
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def eval(self) -> None:
        if self.optimizer is None or self._train_weights is not None:
            return
        self._train_weights = [p.detach().clone() for p in self._params()]
        self.optimizer.eval()
        if self.on_change is not None:
            self.on_change()

    def train(self) -> None:
        if self.optimizer is None:
            return
        self.optimizer.train()
        if self._train_weights is not None:
            with torch.no_grad():
                for param, saved in zip(self._params(), self._train_weights):
                    param.copy_(saved)
            self._train_weights = None
        if self.on_change is not None:
            self.on_change()

    @contextmanager
    def evaluating(self):
        """Eval mode (the averaged weights) inside the block, train mode again after it."""
        self.eval()
        try:
            yield
        finally:
            self.train()
