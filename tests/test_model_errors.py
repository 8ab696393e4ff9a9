"""Bad model inputs give one clear line naming the file and the fix, never a traceback."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.entry import run_cli

from library.errors import UserError
from library.models.checkpoint_file import read_metadata
from library.models.sdxl_loader import load_sdxl, load_vae
from library.models.vae_names import vae_state_dict_to_diffusers


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"missing\.safetensors: model not found .*never downloaded"):
        load_sdxl(tmp_path / "missing.safetensors")


def test_text_file_is_not_a_checkpoint(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_text("this is not a model, just text that happens to be long enough")
    with pytest.raises(UserError, match=r"model\.safetensors: not a safetensors file"):
        load_sdxl(fake)


def test_truncated_download(tiny_single_file, tmp_path):
    partial = tmp_path / "partial.safetensors"
    data = tiny_single_file.read_bytes()
    partial.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"partial\.safetensors: file is truncated \(.* bytes\); download or copy it again"):
        load_sdxl(partial)


def test_sd15_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "v1-5.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 768),
        },
        str(path),
    )
    with pytest.raises(UserError, match=r"v1-5\.safetensors: is a Stable Diffusion 1\.x/2\.x checkpoint, not SDXL"):
        load_sdxl(path)


def test_lora_file_passed_as_model(tmp_path):
    path = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 64)}, str(path))
    with pytest.raises(UserError, match=r"is a LoRA file, not a base model"):
        load_sdxl(path)


def test_vae_file_passed_as_model(tiny_single_file, tmp_path):
    vae_only = {k: v for k, v in load_file(str(tiny_single_file)).items() if k.startswith("first_stage_model.")}
    path = tmp_path / "vae.safetensors"
    save_file(vae_only, str(path))
    with pytest.raises(UserError, match=r"is a VAE, not a full SDXL model; pass it with --vae"):
        load_sdxl(path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"0" * 100)
    with pytest.raises(UserError, match=r"unsupported model file type '\.onnx'"):
        load_sdxl(path)


def test_pickle_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(UserError, match=r"evil\.ckpt: cannot be read as a weights-only checkpoint"):
        load_sdxl(path)


def test_diffusers_folder_without_second_tokenizer(tiny_diffusers_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_diffusers_dir, folder)
    shutil.rmtree(folder / "tokenizer_2")
    with pytest.raises(UserError, match=r"has no 'tokenizer_2/' sub-folder.*--tokenizer_cache_dir"):
        load_sdxl(folder)


def test_diffusers_folder_with_incomplete_unet(tiny_diffusers_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_diffusers_dir, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserError, match=r"unet: no weight files .* incomplete"):
        load_sdxl(folder)


def test_plain_folder_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match=r"is not a diffusers SDXL model"):
        load_sdxl(tmp_path)


def test_run_cli_prints_one_line(capsys):
    def main(argv):
        raise UserError("x.toml: [training_arguments] netwrok_dim: unknown key; did you mean network_dim?")

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: x.toml")


# --vae overrides: every layout a user may have a VAE in loads to the same weights.
@pytest.fixture(scope="module")
def vae_variants(tiny_single_file, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vaes")
    full = load_file(str(tiny_single_file))
    with_prefix = {k: v for k, v in full.items() if k.startswith("first_stage_model.")}
    bare = {k[len("first_stage_model."):]: v for k, v in with_prefix.items()}
    save_file(with_prefix, str(folder / "prefixed.safetensors"))
    save_file(bare, str(folder / "sdxl_vae.safetensors"))
    save_file(vae_state_dict_to_diffusers(bare, 4, 1), str(folder / "diffusers_layout.safetensors"))
    return folder


@pytest.mark.parametrize("name", ["prefixed.safetensors", "sdxl_vae.safetensors", "diffusers_layout.safetensors"])
def test_vae_from_any_file_layout(vae_variants, tiny_sdxl, name):
    vae = load_vae(vae_variants / name)
    reference = tiny_sdxl.vae.state_dict()
    assert vae.state_dict().keys() == reference.keys()
    assert all(torch.equal(vae.state_dict()[k], reference[k]) for k in reference)


def test_vae_override_from_folder(tiny_single_file, tiny_diffusers_dir, tiny_sdxl):
    model = load_sdxl(tiny_single_file, vae=tiny_diffusers_dir / "vae")
    reference = tiny_sdxl.vae.state_dict()
    assert all(torch.equal(model.vae.state_dict()[k], reference[k]) for k in reference)


def test_vae_override_missing(tiny_single_file, tmp_path):
    with pytest.raises(UserError, match=r"nope\.safetensors: VAE not found \(--vae\)"):
        load_sdxl(tiny_single_file, vae=tmp_path / "nope.safetensors")


def test_make_tiny_sdxl_cli_is_deterministic(tiny_single_file, tmp_path):
    from tools.make_tiny_sdxl import main

    assert main(["--output_dir", str(tmp_path), "--seed", "0"]) == 0
    # Same seed, same tensors and metadata (safetensors orders metadata keys by a hash, so not bytes).
    ours, reference = load_file(str(tmp_path / "sdxl_tiny.safetensors")), load_file(str(tiny_single_file))
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert read_metadata(tmp_path / "sdxl_tiny.safetensors") == read_metadata(tiny_single_file)
    assert (tmp_path / "diffusers" / "tokenizer_2").is_dir()
