"""Can this run continue a saved training state? Checked before anything of the state is loaded, so a
mismatch is one line naming both sides instead of a torch traceback, or a run that silently trains
on wrong numbers:

  - train_state.json: every counter has its type and range (a hand-edited or damaged file with
    global_step = -5 would otherwise train extra steps and save under wrong names);
  - network.safetensors: the same tensor names and shapes as this run's network (a rank-4 state
    resumed with network_dim 8 is torch's 60-line "size mismatch" otherwise);
  - the optimizer: the class that saved the state (recorded in train_state.json) is this run's;
    torch's load_state_dict would otherwise hand AdamW's betas and moments to Lion without a word.
"""
from __future__ import annotations

from pathlib import Path

from library.errors import UserError

# train_state.json counters: name -> (smallest valid value, what it is)
_COUNTERS = {
    "global_step": (0, "the number of optimizer steps done"),
    "epoch": (1, "the epoch in progress, counted from 1"),
    "batches_done_in_epoch": (0, "the batches done in that epoch"),
    "seed": (0, "the run's seed"),
}
_LOSS_LISTS = ("recent_losses", "epoch_losses")


class DamagedState(UserError):
    """train_state.json holds a value no run can have written."""

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: damaged state: {problem}; this state cannot be resumed: resume from an older state "
                         f"or delete {self.path.parent.name} and start again")


def progress_fields(data, path: Path) -> dict:
    """The Progress fields of a parsed train_state.json, each checked; raises DamagedState."""
    if not isinstance(data, dict):
        raise DamagedState(path, f"the file holds a JSON {type(data).__name__}, not an object")
    fields = {}
    for name, (smallest, meaning) in _COUNTERS.items():
        if name not in data:
            raise DamagedState(path, f"{name} is missing ({meaning})")
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise DamagedState(path, f"{name} = {value!r} is not {meaning} (a whole number >= {smallest})")
        fields[name] = value
    for name in _LOSS_LISTS:
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise DamagedState(path, f"{name} = {_short(value)} is not a list of loss values")
        fields[name] = [float(v) for v in value]
    return fields


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the network ----------------------------------------------------------------------------------
def _rank_of(key: str, shape: tuple) -> int | None:
    """The LoRA rank a kohya LoRA tensor shape shows (lora_down [r, in, ...], lora_up [out, r, ...])."""
    if key.endswith("lora_down.weight") and shape:
        return shape[0]
    if key.endswith("lora_up.weight") and len(shape) > 1:
        return shape[1]
    return None


def check_network_shapes(folder: Path, saved: dict, network) -> None:
    """The state's network tensors must have this run's names and shapes; one line naming both ranks if not."""
    expected = {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        side = "this config's network has" if missing else "the state has"
        raise UserError(f"{folder}: the saved network does not match this config ({len(missing)} tensor(s) missing, "
                        f"{len(unexpected)} unexpected; e.g. {side} {example}); resume with the same network_module, "
                        "network_args and network_train_unet_only/text_encoder_only as the run that saved it")
    differing = [key for key in sorted(expected) if tuple(saved[key].shape) != expected[key]]
    if not differing:
        return
    ranked = [key for key in differing if _rank_of(key, tuple(saved[key].shape)) is not None]
    key = ranked[0] if ranked else differing[0]
    got, want = tuple(saved[key].shape), expected[key]
    module = key.rsplit(".", 2)[0]
    if ranked:
        conv = len(got) == 4 and got[2:] != (1, 1)
        option = "conv_dim (network_args)" if conv else "network_dim"
        state_rank, run_rank = _rank_of(key, got), _rank_of(key, want)
        raise UserError(f"{folder}: this state was trained at rank {state_rank} and this config asks for rank {run_rank} "
                        f"({option}; {len(differing)} tensor(s) differ, e.g. {module}: {list(got)} saved, {list(want)} now); "
                        f"resume with {option.split(' ')[0]} = {state_rank}, or start a new run for rank {run_rank}")
    raise UserError(f"{folder}: the saved network's {key} is {list(got)} but this config's is {list(want)} "
                    f"({len(differing)} tensor(s) differ); resume with the network settings of the run that saved it")


# -- the optimizer --------------------------------------------------------------------------------
def optimizer_name(optimizer) -> str:
    """What train_state.json records: the optimizer's class, as module.Class."""
    kind = type(optimizer)
    return f"{kind.__module__}.{kind.__qualname__}"


# what the per-group settings of an optimizer are called; these change with the lr schedule or are
# written by adaptive optimizers as they run, so they say nothing about which optimizer it is
_RUNNING_GROUP_KEYS = {"params", "lr", "initial_lr"}


def check_optimizer(folder: Path, recorded: str | None, saved_state: dict, optimizer) -> None:
    """The state's optimizer must be this run's; one line naming both if not.

    States record their optimizer's class; for older states the settings of the first parameter
    group are compared instead (AdamW has eps and amsgrad, Lion has neither)."""
    current = optimizer_name(optimizer)
    if recorded is not None:
        if recorded == current:
            return
        saved_short, current_short = recorded.rsplit(".", 1)[-1], current.rsplit(".", 1)[-1]
        raise UserError(f"{folder}: this state was trained with the optimizer {saved_short} and this run uses {current_short}: "
                        f"its moments and settings do not carry over. Resume with optimizer_type = "
                        f"{saved_short!r}, or start a new run from the state's weights (network_weights = "
                        f"{Path(folder) / 'network.safetensors'}) to change the optimizer")
    saved_groups = saved_state.get("param_groups") or [{}]
    fresh_groups = optimizer.state_dict().get("param_groups") or [{}]
    saved_keys = set(saved_groups[0]) - _RUNNING_GROUP_KEYS
    fresh_keys = set(fresh_groups[0]) - _RUNNING_GROUP_KEYS
    if saved_keys == fresh_keys or not saved_keys:
        return
    raise UserError(f"{folder}: this state was saved by another optimizer (its settings: {', '.join(sorted(saved_keys))}; "
                    f"{current.rsplit('.', 1)[-1]} has {', '.join(sorted(fresh_keys))}). Resume with the "
                    "optimizer_type of the run that saved it, or start a new run from the state's weights (network_weights = "
                    f"{Path(folder) / 'network.safetensors'}) to change the optimizer")

