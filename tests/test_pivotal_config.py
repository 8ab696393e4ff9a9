"""Pivotal tuning and Prodigy options: TOML values reach the optimizer, conflicts are config errors,
the abstraction is replaced as a whole word, and the new tokens are unsplittable in both tokenizers."""
from __future__ import annotations

import pytest
import torch

from library.errors import UserError
from library.training.config.config_checks import check_combinations
from library.training.config.config_loader import resolve_config
from library.training.optim.optimizers import build_optimizer
from library.training.pivotal import PivotalTuning, replace_words, setup_pivotal
from tests.training_fixtures import base_config, write_config

SHIPPED = "train_config/XL_Pivotal_Prodigy_config/config_file.toml"


def _resolve(tmp_path, argv=(), **overrides):
    config = base_config(tmp_path / "m.safetensors", tmp_path, tmp_path / "out", **overrides)
    resolved = resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", config)), *argv])
    notices = list(resolved.notices)
    check_combinations(resolved.args, resolved.sources, notices)
    return resolved.args, notices


def _prodigy_group(args):
    optimizer = build_optimizer(args, [{"params": [torch.nn.Parameter(torch.zeros(3))]}])
    assert type(optimizer).__name__ == "Prodigy"
    return optimizer.param_groups[0]


def test_toml_false_reaches_prodigy_as_false(tmp_path):
    args, _ = _resolve(tmp_path, optimizer_type="Prodigy", learning_rate=1.0, prodigy_decouple=False, prodigy_beta3=0.97,
                       prodigy_use_bias_correction=True, prodigy_safeguard_warmup=False, adam_beta2=0.99, adam_weight_decay=0.01)
    group = _prodigy_group(args)
    assert group["decouple"] is False and group["safeguard_warmup"] is False and group["use_bias_correction"] is True
    assert group["beta3"] == 0.97 and group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.01
    # the string "False" on the command line is false too, and a TOML true stays true
    args, _ = _resolve(tmp_path, ["--prodigy_decouple", "False"], optimizer_type="Prodigy", learning_rate=1.0, prodigy_decouple=True)
    assert _prodigy_group(args)["decouple"] is False
    args, _ = _resolve(tmp_path, optimizer_type="Prodigy", learning_rate=1.0, prodigy_decouple=True)
    assert _prodigy_group(args)["decouple"] is True


def test_shipped_pivotal_prodigy_config_reaches_prodigy():
    resolved = resolve_config(["--config_file", SHIPPED])
    args = resolved.args
    notices = []
    check_combinations(args, resolved.sources, notices)
    assert notices == []  # no "looks like an Adam rate" warning, no unused option
    assert args.train_text_encoder_ti and args.train_text_encoder_ti_frac == 0.5 and args.token_abstraction == "TOK"
    assert args.num_new_tokens_per_abstraction == 2 and args.network_train_unet_only
    assert (args.network_dim, args.network_alpha, args.min_snr_gamma) == (32, 32.0, 5.0)
    assert (args.learning_rate, args.text_encoder_lr) == (1.0, 1.0)
    group = _prodigy_group(args)
    assert group["betas"] == (0.9, 0.99) and group["weight_decay"] == 0.01 and group["decouple"] is True
    assert group["use_bias_correction"] is True and group["safeguard_warmup"] is True and group["lr"] == 1.0


@pytest.mark.parametrize("named, optimizer_args, message", [
    ({"prodigy_decouple": False}, ["decouple=True"], r"prodigy_decouple and optimizer_args \"decouple=True\" set the same thing"),
    ({"prodigy_beta3": 0.9}, ["beta3=0.9"], r"prodigy_beta3 and optimizer_args \"beta3=0.9\""),
    ({"adam_beta1": 0.9}, ["betas=(0.9,0.99)"], r"adam_beta1 and optimizer_args \"betas=\(0.9, 0.99\)\""),
    ({"adam_weight_decay": 0.01}, ["weight_decay=0.01"], r"adam_weight_decay and optimizer_args \"weight_decay=0.01\""),
])
def test_same_setting_both_ways_is_a_config_error(tmp_path, named, optimizer_args, message):
    with pytest.raises(UserError, match=message):
        _resolve(tmp_path, optimizer_type="Prodigy", learning_rate=1.0, optimizer_args=optimizer_args, **named)


def test_prodigy_option_checks(tmp_path):
    with pytest.raises(UserError, match=r"prodigy_decouple applies to optimizer_type = \"Prodigy\" only"):
        _resolve(tmp_path, prodigy_decouple=True)
    with pytest.raises(UserError, match=r"Prodigy needs the same learning rate in every parameter group.*text_encoder_lr = 0.5"):
        _resolve(tmp_path, optimizer_type="Prodigy", learning_rate=1.0, text_encoder_lr=0.5)
    with pytest.raises(UserError, match=r"LoRA\+ .* which Prodigy does not allow"):
        _resolve(tmp_path, optimizer_type="Prodigy", learning_rate=1.0, loraplus_lr_ratio=16.0)
    _, notices = _resolve(tmp_path, optimizer_type="Prodigy", learning_rate=1e-4)
    assert any("learning_rate = 0.0001 looks like an Adam learning rate" in n for n in notices)
    # named Adam settings work for AdamW too
    args, _ = _resolve(tmp_path, adam_beta1=0.8, adam_weight_decay=0.05)
    optimizer = build_optimizer(args, [{"params": [torch.nn.Parameter(torch.zeros(3))]}])
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.999) and optimizer.param_groups[0]["weight_decay"] == 0.05


def test_pivotal_config_errors(tmp_path):
    with pytest.raises(UserError, match=r"train_text_encoder_ti.*not supported; set network_train_unet_only = true"):
        _resolve(tmp_path, train_text_encoder_ti=True)
    with pytest.raises(UserError, match=r"pivotal tuning \(train_text_encoder_ti\) cannot use cache_text_encoder_outputs"):
        _resolve(tmp_path, train_text_encoder_ti=True, network_train_unet_only=True, cache_text_encoder_outputs=True)
    with pytest.raises(UserError, match=r"train_text_encoder_ti_frac must be in \(0, 1\], got 0"):
        _resolve(tmp_path, train_text_encoder_ti=True, network_train_unet_only=True, train_text_encoder_ti_frac=0.0)
    with pytest.raises(UserError, match=r"token_abstraction 'TOK,,X'"):
        _resolve(tmp_path, train_text_encoder_ti=True, network_train_unet_only=True, token_abstraction="TOK,,X")
    args, notices = _resolve(tmp_path, token_abstraction="ZZ")
    assert any("token_abstraction has no effect without train_text_encoder_ti" in n for n in notices)


def test_abstraction_is_replaced_as_a_whole_word():
    replacements = {"TOK": "<s0><s1>", "HAT": "<s2><s3>"}
    text = "TOK, TOKYO, myTOK, TOK_2, TOK's HAT, (TOK:1.2), a photo of TOK.\nTOK"
    assert replace_words(text, replacements) == (
        "<s0><s1>, TOKYO, myTOK, TOK_2, <s0><s1>'s <s2><s3>, (<s0><s1>:1.2), a photo of <s0><s1>.\n<s0><s1>")
    assert replace_words("tok TOKEN", replacements) == "tok TOKEN"  # case-sensitive, whole words only
    assert PivotalTuning(False).replace_in_prompt("TOK") == "TOK"


class _Args:
    train_text_encoder_ti = True
    train_text_encoder_ti_frac = 0.5
    token_abstraction = "TOK, HAT"
    num_new_tokens_per_abstraction = 2
    initializer_token = None
    output_name = "x"
    metadata_trigger_phrase = None
    seed = 3


class _Subset:
    caption_prefix = None
    caption_suffix = "wearing HAT"


class _Item:
    def __init__(self, caption):
        self.caption, self.subset = caption, _Subset()


def _text_parts(model):
    """A copy of only the tokenizers and text encoders (what pivotal tuning touches); cheaper than the whole model."""
    import copy
    from types import SimpleNamespace

    return SimpleNamespace(tokenizers=copy.deepcopy(model.tokenizers), text_encoders=copy.deepcopy(model.text_encoders))


def test_new_tokens_are_unsplittable_and_rows_are_separate(_tiny_sdxl_loaded):
    tiny_sdxl = _text_parts(_tiny_sdxl_loaded)
    base_weights = [e.get_input_embeddings().weight.clone() for e in tiny_sdxl.text_encoders]
    pivotal = setup_pivotal(_Args(), tiny_sdxl, [_Item("a photo of TOK")])
    assert pivotal.tokens == {"TOK": ["<s0>", "<s1>"], "HAT": ["<s2>", "<s3>"]}
    prompt = pivotal.replace_in_prompt("TOK in TOKYO wearing HAT")
    assert prompt == "<s0><s1> in TOKYO wearing <s2><s3>"
    for tokenizer, encoder, base in zip(tiny_sdxl.tokenizers, tiny_sdxl.text_encoders, base_weights):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        assert ids[:2] == [49408, 49409] and ids[-2:] == [49410, 49411]
        assert tokenizer("TOKYO", add_special_tokens=False).input_ids == ids[3:-3]  # the rest tokenizes as before
        embedding = encoder.get_input_embeddings()
        looked_up = embedding(torch.tensor([[0, 49407, 49408, 49411]]))[0]
        assert torch.equal(looked_up[:2], base[[0, 49407]])
        assert torch.equal(looked_up[2:], embedding.new_rows[[0, 3]])
        assert abs(embedding.new_rows.std().item() / base.std().item() - 1) < 0.3  # random start with the vocabulary's spread
    pivotal.after_optimizer_step(1, 2)  # step 1 of 2 with frac 0.5: the pivot
    assert not pivotal.needs_grad
    with pytest.raises(UserError, match=r"already has the token\(s\) <s0>"):
        setup_pivotal(_Args(), tiny_sdxl, [_Item("TOK HAT")])


def test_state_dict_round_trip(_tiny_sdxl_loaded):
    first = setup_pivotal(_Args(), _text_parts(_tiny_sdxl_loaded))
    with torch.no_grad():
        first.rows[0].add_(1.0)
    first.after_optimizer_step(5, 6)  # past floor(0.5 x 6) = 3: frozen
    state = first.state_dict()
    assert state["frozen"] is True and state["clip_l"].shape == (4, 64) and state["clip_g"].shape == (4, 128)
    second = setup_pivotal(_Args(), _text_parts(_tiny_sdxl_loaded))
    assert second.needs_grad
    second.load_state_dict(state)
    assert not second.needs_grad
    assert all(torch.equal(a, b) for a, b in zip(first.embedding_tensors().values(), second.embedding_tensors().values()))


def test_abstraction_missing_from_every_caption_is_an_error(_tiny_sdxl_loaded):
    with pytest.raises(UserError, match=r"token_abstraction 'TOK' appears in no caption"):
        setup_pivotal(_Args(), _tiny_sdxl_loaded, [_Item("a photo of TOKYO")])  # raises before touching the model
