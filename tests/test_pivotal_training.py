"""Pivotal tuning end to end on the tiny model: only the new rows train, the _emb file is what
diffusers' textual-inversion loader reproduces, and the pivot stops the embeddings after
floor(frac x steps) optimizer steps while the LoRA keeps training."""
from __future__ import annotations

import pytest
import torch

from library.models.checkpoint_file import read_metadata
from library.training.pivotal import NewTokenEmbedding, initial_rows
from tests.training_fixtures import base_config, lora_tensors, make_concept_images, run_training, write_config

CAPTION = "TOK, 1girl, black suit"
VOCAB = 49408


@pytest.fixture(scope="module")
def two_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("pivotal_two")
    make_concept_images(root / "1_TOK", count=2, caption=CAPTION, sizes=[(64, 64)])
    return root


@pytest.fixture(scope="module")
def seven_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("pivotal_seven")
    make_concept_images(root / "1_TOK", count=7, caption=CAPTION, sizes=[(64, 64)])
    return root


@pytest.fixture(scope="module")
def trained(tiny_diffusers_dir, two_images, tmp_path_factory):
    """A pivotal run kept in memory: AdamW with strong weight decay on the embeddings, 4 steps."""
    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer

    tmp = tmp_path_factory.mktemp("pivotal_run")
    config = base_config(tiny_diffusers_dir, two_images, tmp / "out", max_train_steps=4, train_batch_size=1, learning_rate=1e-2,
                         train_text_encoder_ti=True, train_text_encoder_ti_frac=1.0, network_train_unet_only=True,
                         adam_weight_decay=0.1, adam_weight_decay_text_encoder=0.5)
    resolved = resolve_config(["--config_file", str(write_config(tmp / "c.toml", config))])
    trainer = Trainer(resolved)
    trainer.setup()
    final = trainer.run()
    return trainer, final


def _base_model(path):
    from library.models.sdxl_loader import load_sdxl

    return load_sdxl(path)


def test_only_the_new_rows_change_in_both_text_encoders(trained, tiny_diffusers_dir):
    from safetensors.torch import load_file

    trainer, final = trained
    base = _base_model(tiny_diffusers_dir)
    saved = load_file(str(final.with_name("tiny_lora_emb.safetensors")))
    assert {k: tuple(v.shape) for k, v in saved.items()} == {"clip_l": (2, 64), "clip_g": (2, 128)}
    for index, (encoder, base_encoder, key) in enumerate(zip(trainer.model.text_encoders, base.text_encoders, ("clip_l", "clip_g"))):
        embedding = encoder.get_input_embeddings()
        assert isinstance(embedding, NewTokenEmbedding)
        # the new rows moved away from their seeded random start (by the optimizer, not only the pull-back)
        start = initial_rows(base_encoder.get_input_embeddings().weight, 2, torch.Generator().manual_seed(1234 * 2 + index), None)
        moved = (saved[key] - start).abs().max().item()
        assert moved > 1e-3, moved
        assert torch.equal(embedding.new_rows, saved[key])
        # every original row, looked up through the trained encoder, is bit-identical to the base
        with torch.no_grad():
            looked_up = embedding(torch.arange(VOCAB)[None])[0]
        assert torch.equal(looked_up, base_encoder.get_input_embeddings().weight)
        # and nothing else in the encoder changed: same keys, same shapes, same bits
        trained_state, base_state = encoder.state_dict(), base_encoder.state_dict()
        assert trained_state.keys() == base_state.keys()
        assert all(torch.equal(trained_state[k], base_state[k]) for k in base_state)
    metadata = read_metadata(final)
    assert metadata["ss_pivotal_tokens"] == '{"TOK": ["<s0>", "<s1>"]}'
    assert metadata["ss_pivotal_embedding"] == "tiny_lora_emb.safetensors"
    assert metadata["modelspec.trigger_phrase"] == "tiny_lora_emb"
    assert trainer.group_names[-2:] == ["embeddings te1", "embeddings te2"]
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.1] * (len(trainer.optimizer.param_groups) - 2) + [0.5, 0.5]


def test_emb_file_loaded_by_diffusers_reproduces_the_trained_prompt_embeddings(trained, tiny_diffusers_dir):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    from library.models.sdxl_conditioning import encode_captions

    trainer, final = trained
    state = load_file(str(final.with_name("tiny_lora_emb.safetensors")))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(tiny_diffusers_dir), local_files_only=True)
    base_embeds, _, base_pooled, _ = pipe.encode_prompt("a photo of TOK in TOKYO", do_classifier_free_guidance=False)
    tokens = ["<s0>", "<s1>"]
    pipe.load_textual_inversion(state["clip_l"], token=tokens, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token=tokens, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    prompt = trainer.pivotal.replace_in_prompt("a photo of TOK in TOKYO")
    assert prompt == "a photo of <s0><s1> in TOKYO"
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
        ours, ours_pooled = encode_captions(trainer.model, [prompt], None)
    assert embeds.shape == ours.shape == (1, 77, 192)
    torch.testing.assert_close(embeds, ours, rtol=0, atol=1e-6)  # measured: exactly equal
    torch.testing.assert_close(pooled, ours_pooled, rtol=0, atol=1e-6)
    # the tokens matter: the same prompt with the plain word gives something else
    assert (embeds - base_embeds).abs().max() > 1e-2


def _embeddings(files):
    from safetensors.torch import load_file

    return [load_file(str(f)) for f in files]


def _changed(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layout", ["four_epochs", "one_epoch"])
def test_embeddings_train_until_the_pivot_then_only_the_lora(tiny_single_file, two_images, seven_images, tmp_path, layout):
    from library.models.sdxl_loader import load_sdxl

    if layout == "four_epochs":  # 2 steps per epoch, 7 steps; initialised from a word
        final = run_training(tmp_path, tiny_single_file, two_images, max_train_steps=7, train_batch_size=1, save_every_n_steps=1,
                             save_every_n_epochs=1, train_text_encoder_ti=True, network_train_unet_only=True, initializer_token="cat")
        model = load_sdxl(tiny_single_file)
        cat = [model.tokenizers[i]("cat", add_special_tokens=False).input_ids[0] for i in (0, 1)]
        start = {key: encoder.get_input_embeddings().weight[[cat[i]] * 2].detach()
                 for i, (key, encoder) in enumerate(zip(("clip_l", "clip_g"), model.text_encoders))}
        assert [p.name for p in sorted(final.parent.glob("*-0000*_emb.safetensors"))] == [
            f"tiny_lora-00000{e}_emb.safetensors" for e in (1, 2, 3)]
    else:  # one epoch of 7 steps, random start
        final = run_training(tmp_path, tiny_single_file, seven_images, max_train_steps=None, max_train_epochs=1, train_batch_size=1,
                             save_every_n_steps=1, train_text_encoder_ti=True, network_train_unet_only=True)
        model = load_sdxl(tiny_single_file)
        start = {key: initial_rows(encoder.get_input_embeddings().weight, 2, torch.Generator().manual_seed(1234 * 2 + i), None)
                 for i, (key, encoder) in enumerate(zip(("clip_l", "clip_g"), model.text_encoders))}
    out = final.parent
    steps = [out / f"tiny_lora-step{s:08d}_emb.safetensors" for s in range(1, 7)] + [out / "tiny_lora_emb.safetensors"]
    embeddings = [start] + _embeddings(steps)
    changes = [_changed(embeddings[k - 1], embeddings[k]) for k in range(1, 8)]
    assert changes == [True, True, True, False, False, False, False]  # floor(0.5 x 7) = 3
    loras = [lora_tensors(out / f"tiny_lora-step{s:08d}.safetensors") for s in (3, 4, 5)] + [lora_tensors(final)]
    assert all(_changed(loras[k - 1], loras[k]) for k in range(1, 4))  # the LoRA keeps training after the pivot
    assert read_metadata(out / "tiny_lora-step00000002.safetensors")["ss_pivotal_trigger_phrase"] == "tiny_lora-step00000002_emb"


def test_shipped_pivotal_prodigy_config_trains_with_paths_and_size_changed(tiny_single_file, two_images, tmp_path):
    from library.training.config.config_loader import resolve_config
    from library.training.loop import Trainer
    from library.training.optim.lr_schedulers import lr_logs

    resolved = resolve_config([
        "--config_file", "train_config/XL_Pivotal_Prodigy_config/config_file.toml",
        "--pretrained_model_name_or_path", str(tiny_single_file), "--train_data_dir", str(two_images),
        "--caption_extension", ".caption", "--output_dir", str(tmp_path / "out"), "--logging_dir", str(tmp_path / "logs"),
        "--resolution", "64,64", "--min_bucket_reso", "32", "--max_bucket_reso", "128", "--bucket_reso_steps", "32",
        "--train_batch_size", "1", "--max_train_steps", "4", "--save_every_n_steps", "1", "--save_last_n_steps", "1",
        "--max_data_loader_n_workers", "0",
        "--cache_latents_to_disk", "false",
    ])
    trainer = Trainer(resolved)
    trainer.setup()
    final = trainer.run()
    assert type(trainer.optimizer).__name__ == "Prodigy"
    logs = lr_logs(trainer.optimizer, trainer.group_names)
    d_lr = {k: v for k, v in logs.items() if k.startswith("lr/d*lr/")}
    assert set(d_lr) >= {"lr/d*lr/unet", "lr/d*lr/embeddings_te1", "lr/d*lr/embeddings_te2"}
    assert all(v > 0 for v in d_lr.values())
    names = sorted(p.name for p in final.parent.glob("*.safetensors"))
    # save_last_n_steps removed step 1's LoRA at step 3, and its _emb file with it
    assert names == ["pivotal_prodigy-step00000002.safetensors", "pivotal_prodigy-step00000002_emb.safetensors",
                     "pivotal_prodigy-step00000003.safetensors", "pivotal_prodigy-step00000003_emb.safetensors",
                     "pivotal_prodigy.safetensors", "pivotal_prodigy_emb.safetensors"]
    first, last = _embeddings([final.parent / names[1], final.parent / names[5]])
    assert not _changed(first, last)  # frac 0.5 of 4 steps: frozen after step 2
    metadata = read_metadata(final)
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("32", "32.0")
    assert metadata["ss_optimizer"].startswith("prodigyopt.prodigy.Prodigy")


def test_pivotal_run_resumes_exactly_with_its_embeddings(tiny_single_file, two_images, tmp_path):
    """The state holds the new rows and the pivot flag: resuming at step 2 of 6 (before the pivot at
    step 3) ends with the same LoRA and the same _emb file as the uninterrupted run."""
    from safetensors.torch import load_file

    common = dict(max_train_steps=6, train_batch_size=1, learning_rate=1e-2, train_text_encoder_ti=True,
                  train_text_encoder_ti_frac=0.5, network_train_unet_only=True)
    full = run_training(tmp_path, tiny_single_file, two_images, name="full", save_state=True, save_every_n_steps=2, **common)
    state = tmp_path / "full_out" / "tiny_lora-step00000002-state"
    resumed = run_training(tmp_path, tiny_single_file, two_images, name="resumed", resume=str(state), **common)
    for a_path, b_path in ((full, resumed), (full.with_name("tiny_lora_emb.safetensors"), resumed.with_name("tiny_lora_emb.safetensors"))):
        a, b = load_file(str(a_path)), load_file(str(b_path))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
