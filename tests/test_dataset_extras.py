"""kohya's dataset extras: conditioning_data_dir loss masks, dataset network_multiplier,
custom_attributes diff_output_preservation, cache_info, and the metadata_* ModelSpec options."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import toml
import torch
from PIL import Image

from library.errors import UserError
from library.training.config.config_loader import resolve_config
from library.training.loop import Trainer
from tests.training_fixtures import base_config, flat, lora_tensors, make_concept_images, run_training, write_config


def pattern(width: int, height: int) -> np.ndarray:
    """A mask that tells left from right and top from bottom: 0..255 by position."""
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    return np.round(255 * (0.7 * x + 0.3 * y)).astype(np.uint8)


def trainer_for(tmp_path, model, train_dir, **overrides) -> Trainer:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = base_config(model, train_dir, tmp_path / "out", **overrides)
    return Trainer(resolve_config(["--config_file", str(write_config(tmp_path / "c.toml", flat(config)))]))


def test_conditioning_mask_is_placed_exactly_like_an_alpha_mask(tmp_path, tiny_single_file):
    """The same pattern as a mask file (red channel) and as the image's alpha channel gives the same
    mask tensor for every sample, flipped or not: both follow the image's resize and crop."""
    from library.models.sdxl_loader import load_sdxl

    source_image = make_concept_images(tmp_path / "src", count=1, sizes=[(96, 48)])[0]
    rgb = np.asarray(Image.open(source_image).convert("RGB"))
    mask = pattern(96, 48)
    alpha_dir, cond_dir, mask_dir = tmp_path / "alpha" / "1_a", tmp_path / "cond" / "1_a", tmp_path / "masks"
    for folder in (alpha_dir, cond_dir, mask_dir):
        folder.mkdir(parents=True)
    Image.fromarray(np.dstack([rgb, mask])).save(alpha_dir / "img0.png")
    Image.fromarray(rgb).save(cond_dir / "img0.png")
    Image.fromarray(np.dstack([mask, 255 - mask, mask])).save(mask_dir / "img0.png")  # only red counts, as kohya
    common = dict(resolution="64,64", min_bucket_reso=32, max_bucket_reso=128, cache_latents=None, masked_loss=True,
                  flip_aug=True)
    vae = load_sdxl(tiny_single_file).vae
    masks = []
    for train_dir, extra in ((alpha_dir.parent, {"alpha_mask": True}), (cond_dir.parent, {"conditioning_data_dir": str(mask_dir)})):
        trainer = trainer_for(tmp_path / train_dir.name, tiny_single_file, train_dir, **common, **extra)
        from library.training.inputs.latent_source import LatentSource

        source = LatentSource(trainer.items, vae, trainer.args, [])
        masks.append([source.get(0, flip)[1] for flip in (False, True)])
    item = trainer.items[0]
    assert item.mask_path == mask_dir / "img0.png" and item.bucket != item.placement.original_size
    for alpha_mask, cond_mask in zip(*masks):
        assert cond_mask.shape == (item.bucket[1], item.bucket[0])
        assert torch.allclose(alpha_mask, cond_mask, atol=1e-6)
    assert not torch.equal(masks[1][0], masks[1][1])  # the flip flips the mask


def test_mask_lookup_errors_and_sub_folders(tmp_path, tiny_single_file):
    images = make_concept_images(tmp_path / "train" / "2_ohwx", count=3, sizes=[(64, 64)])
    masks = tmp_path / "masks"
    (masks / "2_ohwx").mkdir(parents=True)
    Image.fromarray(pattern(64, 64)).save(masks / "2_ohwx" / "img0.png")  # the DreamBooth sub-folder layout
    Image.fromarray(pattern(32, 32)).save(masks / "img1.jpg")  # any extension; half size, same aspect: resized
    with pytest.raises(UserError, match=r"masks: no mask for 1 training image\(s\) \(e\.g\. img2\.png\)"):
        trainer_for(tmp_path, tiny_single_file, tmp_path / "train", masked_loss=True, conditioning_data_dir=str(masks))
    Image.fromarray(pattern(64, 64)).save(masks / "img2.png")
    Image.fromarray(pattern(64, 64)).save(masks / "unrelated.png")
    trainer = trainer_for(tmp_path, tiny_single_file, tmp_path / "train", masked_loss=True, conditioning_data_dir=str(masks))
    assert [item.mask_path.relative_to(masks).as_posix() for item in trainer.items] == ["2_ohwx/img0.png", "img1.jpg", "img2.png"]
    assert any("1 mask(s) match no training image (e.g. unrelated.png)" in n for n in trainer.notices)
    Image.fromarray(pattern(40, 64)).save(masks / "img2.png")
    from library.training.inputs.condition_masks import load_mask

    with pytest.raises(UserError, match=r"mask is 40x64 but its image is 64x64"):
        load_mask(masks / "img2.png", trainer.items[2].placement)
    unmasked = trainer_for(tmp_path, tiny_single_file, tmp_path / "train", conditioning_data_dir=str(masks))
    assert any("used only with masked_loss" in n for n in unmasked.notices) and images


def test_masked_loss_with_a_mask_folder_trains(tmp_path, tiny_single_file):
    train = tmp_path / "train" / "2_ohwx"
    images = make_concept_images(train, count=2, sizes=[(64, 64)])
    (tmp_path / "masks").mkdir()
    for image in images:
        Image.fromarray(pattern(64, 64)).save(tmp_path / "masks" / image.name)
    final = run_training(tmp_path, tiny_single_file, tmp_path / "train", masked_loss=True, conditioning_data_dir=str(tmp_path / "masks"),
                         max_train_steps=2, network_train_unet_only=True)
    assert max(v.abs().max().item() for k, v in lora_tensors(final).items() if k.endswith("lora_up.weight")) > 0


def dataset_toml(path: Path, datasets: list[dict]) -> Path:
    path.write_text(toml.dumps({"datasets": datasets}), encoding="utf-8")
    return path


def test_dataset_network_multiplier_zero_trains_nothing_and_one_trains(tmp_path, tiny_single_file):
    make_concept_images(tmp_path / "a", count=2, sizes=[(64, 64)])
    ups = {}
    for multiplier in (0.0, 1.0):
        dataset = dataset_toml(tmp_path / f"d{multiplier}.toml", [
            {"resolution": 64, "batch_size": 2, "network_multiplier": multiplier, "subsets": [{"image_dir": str(tmp_path / "a")}]}])
        final = run_training(tmp_path, tiny_single_file, tmp_path, name=f"m{multiplier}", dataset_config=str(dataset),
                             train_data_dir=None, max_train_steps=2, network_train_unet_only=True)
        ups[multiplier] = max(v.abs().max().item() for k, v in lora_tensors(final).items() if k.endswith("lora_up.weight"))
    assert ups[0.0] == 0.0 and ups[1.0] > 0  # at multiplier 0 the LoRA has no effect, so no gradient reaches it


def test_diff_output_preservation_targets_the_base_model(tmp_path, tiny_single_file):
    """kohya's custom_attributes diff_output_preservation: the target is the prediction with the LoRA
    off. At the start the LoRA adds nothing, so the loss of such a batch is exactly 0."""
    make_concept_images(tmp_path / "a", count=2, sizes=[(64, 64)])
    losses = {}
    for preserve in (True, False):
        subset = {"image_dir": str(tmp_path / "a"), "custom_attributes": {"diff_output_preservation": preserve, "note": "x"}}
        dataset = dataset_toml(tmp_path / f"d{preserve}.toml", [{"resolution": 64, "batch_size": 2, "subsets": [subset]}])
        trainer = trainer_for(tmp_path / str(preserve), tiny_single_file, tmp_path, dataset_config=str(dataset), train_data_dir=None,
                              network_train_unet_only=True)
        trainer.setup()
        assert any("custom_attributes note: carried as in kohya" in n for n in trainer.notices)
        losses[preserve] = trainer.objective.batch_loss([0, 1], [11, 12], 1, 0).item()
    assert losses[True] == 0.0 and losses[False] > 0.01


def test_diff_output_preservation_target_is_detached_with_text_encoder_training(tmp_path, tiny_single_file):
    """With a text-encoder LoRA the prior's conditioning carries gradients; kohya computes the prior
    under no_grad, so the gradients are those of the loss against a constant (detached) target. A
    prior left in the graph would add a gradient through the target into the text-encoder LoRA."""
    make_concept_images(tmp_path / "a", count=2, sizes=[(64, 64)])
    subset = {"image_dir": str(tmp_path / "a"), "custom_attributes": {"diff_output_preservation": True}}
    dataset = dataset_toml(tmp_path / "d.toml", [{"resolution": 64, "batch_size": 2, "subsets": [subset]}])
    trainer = trainer_for(tmp_path / "run", tiny_single_file, tmp_path, dataset_config=str(dataset), train_data_dir=None)
    trainer.setup()
    torch.manual_seed(0)
    for name, param in trainer.network.named_parameters():
        if "lora_up" in name:  # a LoRA that changes the output, so the loss and its gradients are not zero
            param.data.normal_(std=0.05)
    indices, seeds = [0, 1], [11, 12]

    def gradients(loss) -> dict:
        trainer.network.zero_grad(set_to_none=True)
        loss.backward()
        return {n: p.grad.clone() for n, p in trainer.network.named_parameters() if p.grad is not None}

    trained = gradients(trainer.objective.batch_loss(indices, seeds, 1, 0))

    def by_hand(prior_in_graph: bool):
        latents, _, ids, _ = trainer.objective.inputs(indices, seeds)
        noise, timesteps, noisy = trainer.objective.noise(latents, seeds)
        context, pooled = trainer.objective.conditioning(indices, seeds, 1, 0)
        cond = {"text_embeds": pooled, "time_ids": ids}
        prediction = trainer.model.unet(noisy, timesteps, context, added_cond_kwargs=cond).sample
        trainer.network.set_multiplier(0.0)
        with torch.set_grad_enabled(prior_in_graph):
            prior = trainer.model.unet(noisy, timesteps, context, added_cond_kwargs=cond).sample
        trainer.network.set_multiplier(1.0)
        target = prior if prior_in_graph else prior.detach()
        return ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3)).mean()

    detached = gradients(by_hand(prior_in_graph=False))
    assert trained.keys() == detached.keys() and any(n.startswith("lora_te") for n in trained)
    for name in trained:
        torch.testing.assert_close(trained[name], detached[name], rtol=1e-5, atol=1e-9)
    leaky = gradients(by_hand(prior_in_graph=True))  # what autograd through the prior would give
    assert max((leaky[n] - trained[n]).abs().max().item() for n in trained if n.startswith("lora_te")) > 1e-6


def test_cache_info_writes_kohyas_file_and_trusts_it_only_while_fresh(tmp_path, tiny_single_file):
    folder = tmp_path / "train" / "3_ohwx"
    images = make_concept_images(folder, count=2, caption_extension=".txt", caption="ohwx, smile", sizes=[(64, 64), (96, 64)])
    trainer = trainer_for(tmp_path, tiny_single_file, tmp_path / "train", cache_info=True, caption_extension=".txt")
    cache = folder / "metadata_cache.json"
    written = json.loads(cache.read_text())
    assert {Path(k).name: v for k, v in written.items()} == {
        "img0.png": {"caption": "ohwx, smile", "resolution": [64, 64]}, "img1.png": {"caption": "ohwx, smile", "resolution": [96, 64]}}
    # a kohya-written cache (another path prefix) is read as is, without opening the images
    cache.write_text(json.dumps({f"C:/data/3_ohwx/{p.name}": {"caption": "from cache", "resolution": [64, 64]} for p in images}))
    os.utime(cache, (images[0].stat().st_mtime + 10,) * 2)
    trainer = trainer_for(tmp_path, tiny_single_file, tmp_path / "train", cache_info=True, caption_extension=".txt")
    assert [item.caption for item in trainer.items] == ["from cache", "from cache"]
    assert trainer.items[1].placement.original_size == (64, 64)
    # a caption edited after the cache was written makes it stale: rebuilt from the files
    os.utime(images[1].with_suffix(".txt"), (cache.stat().st_mtime + 10,) * 2)
    trainer = trainer_for(tmp_path, tiny_single_file, tmp_path / "train", cache_info=True, caption_extension=".txt")
    assert [item.caption for item in trainer.items] == ["ohwx, smile", "ohwx, smile"]


def test_metadata_modelspec_options_reach_the_lora_file(tmp_path, tiny_single_file):
    from safetensors import safe_open

    make_concept_images(tmp_path / "train" / "1_ohwx", count=2, sizes=[(64, 64)])
    final = run_training(tmp_path, tiny_single_file, tmp_path / "train", max_train_steps=1, network_train_unet_only=True,
                         metadata_usage_hint="say ohwx", metadata_merged_from="a, b", metadata_preprocessor="canny",
                         metadata_is_negative_embedding="false")
    with safe_open(str(final), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["modelspec.usage_hint"] == "say ohwx" and metadata["modelspec.merged_from"] == "a, b"
    assert metadata["modelspec.preprocessor"] == "canny" and metadata["modelspec.is_negative_embedding"] == "false"
