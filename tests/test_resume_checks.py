"""--resume with a state this run cannot continue: another rank, another optimizer, a damaged
train_state.json. Each stops with one `error:` line naming both sides (or the field) and the fix,
exit code 2, the state untouched and nothing written."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from library.entry import run_cli
from tests.training_fixtures import base_config, make_concept_images, write_config


@pytest.fixture(scope="module")
def trained(tiny_single_file, tmp_path_factory):
    """(data folder, output folder) of a 2-step AdamW rank-4 run that saved its state at the end."""
    from sdxl_train_network import main

    root = tmp_path_factory.mktemp("resume_checks")
    make_concept_images(root / "data" / "2_catwomen", count=4)
    config = write_config(root / "c.toml", base_config(tiny_single_file, root / "data", root / "out", max_train_steps=2,
                                                       save_state_on_train_end=True))
    assert run_cli(main, ["--config_file", str(config)]) == 0
    return root / "data", root / "out"


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _resume(tiny_single_file, data, state, tmp_path, capsys, **overrides) -> str:
    """Resume `state` into a new output folder; returns the one error line (asserting exit 2)."""
    from sdxl_train_network import main

    out = tmp_path / "resumed"
    config = write_config(tmp_path / "r.toml", base_config(tiny_single_file, data, out, max_train_steps=4, **overrides))
    capsys.readouterr()
    code = run_cli(main, ["--config_file", str(config), "--resume", str(state)])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip() and not re.match(r".*\d+%\|", line)]
    assert code == 2 and "Traceback" not in captured.err, captured.err[-3000:]
    assert len(lines) == 1, lines
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*-state"))  # nothing written
    return lines[0]


def test_resume_with_another_rank_names_both_ranks(tiny_single_file, trained, tmp_path, capsys):
    data, out = trained
    state = out / "tiny_lora-state"
    before = _digests(state)
    line = _resume(tiny_single_file, data, out, tmp_path, capsys, network_dim=8)
    assert re.fullmatch(rf"error: {re.escape(str(state))}: this state was trained at rank 4 and this config asks for rank 8 "
                        r"\(network_dim; 556 tensor\(s\) differ, e.g. lora_te1_text_model_encoder_layers_0_mlp_fc1: \[4, 64\] saved, "
                        r"\[8, 64\] now\); resume with network_dim = 4, or start a new run for rank 8", line), line
    assert _digests(state) == before
    # the other way round: a state whose network file holds rank 8, this run's network rank 4
    import torch
    from safetensors.torch import load_file

    from library.errors import UserError
    from library.training.outputs.state_checks import check_network_shapes

    rank_4 = load_file(str(state / "network.safetensors"))
    rank_8 = {k: torch.zeros(8, *v.shape[1:]) if k.endswith("lora_down.weight") else v for k, v in rank_4.items()}

    class Network(torch.nn.Module):
        def state_dict(self):
            return rank_4

    with pytest.raises(UserError, match=r"trained at rank 8 and this config asks for rank 4 \(network_dim; 278 tensor\(s\) "
                                        r"differ, .*resume with network_dim = 8"):
        check_network_shapes(state, rank_8, Network())


def test_resume_with_another_optimizer_names_both(tiny_single_file, trained, tmp_path, capsys):
    data, out = trained
    state = out / "tiny_lora-state"
    recorded = json.loads((state / "train_state.json").read_text())["optimizer"]
    assert recorded == "torch.optim.adamw.AdamW"
    before = _digests(state)
    line = _resume(tiny_single_file, data, out, tmp_path, capsys, optimizer_type="Lion")
    assert line == (f"error: {state}: this state was trained with the optimizer AdamW and this run uses Lion: its moments and "
                    "settings do not carry over. Resume with optimizer_type = 'AdamW', or start a new run from the state's "
                    f"weights (network_weights = {state / 'network.safetensors'}) to change the optimizer")
    assert _digests(state) == before
    # a state saved before the optimizer was recorded: told apart by its settings (AdamW has eps, Lion has not)
    legacy = tmp_path / "legacy" / "tiny_lora-state"
    shutil.copytree(state, legacy)
    content = json.loads((legacy / "train_state.json").read_text())
    del content["optimizer"]
    (legacy / "train_state.json").write_text(json.dumps(content))
    line = _resume(tiny_single_file, data, legacy, tmp_path, capsys, optimizer_type="Lion")
    assert re.fullmatch(rf"error: {re.escape(str(legacy))}: this state was saved by another optimizer \(its settings: amsgrad, "
                        r"betas, capturable, decoupled_weight_decay, differentiable, eps, foreach, fused, maximize, weight_decay; "
                        r"Lion has betas, weight_decay\)\. Resume with the optimizer_type of the run that saved it, .*", line), line


@pytest.mark.parametrize("field, value, problem", [
    ("global_step", -5, r"global_step = -5 is not the number of optimizer steps done \(a whole number >= 0\)"),
    ("epoch", 0, r"epoch = 0 is not the epoch in progress, counted from 1 \(a whole number >= 1\)"),
    ("batches_done_in_epoch", "3", r"batches_done_in_epoch = '3' is not the batches done in that epoch \(a whole number >= 0\)"),
    ("seed", None, r"seed is missing \(the run's seed\)"),
    ("recent_losses", "0.5", r"recent_losses = '0\.5' is not a list of loss values"),
])
def test_a_damaged_train_state_names_the_field_before_any_model_loads(tiny_single_file, trained, tmp_path, capsys, monkeypatch,
                                                                        field, value, problem):
    import library.models.sdxl_loader as loader

    monkeypatch.setattr(loader, "load_sdxl", lambda *a, **k: pytest.fail("the model was loaded before the state was checked"))
    data, out = trained
    damaged = tmp_path / "copy" / "tiny_lora-state"
    shutil.copytree(out / "tiny_lora-state", damaged)
    content = json.loads((damaged / "train_state.json").read_text())
    if value is None:
        del content[field]
    else:
        content[field] = value
    (damaged / "train_state.json").write_text(json.dumps(content))
    before = _digests(damaged)
    line = _resume(tiny_single_file, data, damaged.parent, tmp_path, capsys)  # the output folder: the newest state is taken
    assert re.fullmatch(rf"error: {re.escape(str(damaged / 'train_state.json'))}: damaged state: {problem}; this state cannot be "
                        r"resumed: resume from an older state or delete tiny_lora-state and start again", line), line
    assert _digests(damaged) == before
