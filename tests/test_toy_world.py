"""The toy world (tools/toy_world/, docs/toy_world.md): a base model pretrained on coloured shapes
draws the colour each caption names, and a LoRA trained by the product's trainer on the held-out
concept makes the trigger draw the concept colour while leaving the base prompts alone. A bug in
conditioning (time ids, pooled embeddings, token layout), in the noise schedule, in sampling or in
applying a LoRA at inference moves one of these rates and fails here.

The world is built once per session (conftest.py `toy_world_dir`, about two minutes) and is the very
model `python tools/make_toy_world.py` builds.
"""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tools.toy_world import world
from tools.toy_world.scoring import rate, score_image


def _nearest(colour, table: dict) -> str:
    return min(table, key=lambda name: float(np.linalg.norm(np.asarray(colour, float) - np.asarray(table[name], float))))


def test_nothing_the_base_draws_by_itself_reads_as_the_concept_colour():
    """Blends of two palette colours (with up to half background) and palette colours fading into the
    background are never nearest to the concept colour; the concept's own fade passes only through
    the concept and the background."""
    table = {**world.PALETTE, "background": world.BACKGROUND, "concept": world.CONCEPT_COLOUR}
    palette = [np.asarray(c, float) for c in world.PALETTE.values()]
    background = np.asarray(world.BACKGROUND, float)
    for i, first in enumerate(palette):
        for second in palette[i + 1 :]:
            for share in np.linspace(0, 1, 21):
                for solid in np.linspace(0.5, 1, 6):
                    blend = solid * (share * first + (1 - share) * second) + (1 - solid) * background
                    assert _nearest(blend, table) != "concept", blend
        for fade in np.linspace(0, 1, 41):
            assert _nearest(background + fade * (first - background), table) != "concept"
    concept = np.asarray(world.CONCEPT_COLOUR, float)
    for fade in np.linspace(0, 1, 41):
        assert _nearest(background + fade * (concept - background), table) in ("background", "concept")


def test_scoring_names_the_foreground_colour():
    description = world.description()
    rng = np.random.default_rng(0)
    for name, colour in [*world.PALETTE.items(), (world.TRIGGER, world.CONCEPT_COLOUR)]:
        image = world.draw(world.random_shape(rng, colour, "circle"))
        score = score_image(image, description)
        assert score["colour"] == name and score["votes"][name] > 0.9 and 0.15 < score["foreground"] < 0.6
    blank = Image.new("RGB", (64, 64), world.BACKGROUND)
    assert score_image(blank, description)["colour"] == "none"
    # a half-red half-blue image is red or blue, never the average of the two
    half = np.full((64, 64, 3), world.BACKGROUND, dtype=np.uint8)
    half[16:48, 8:32], half[16:48, 32:56] = world.PALETTE["red"], world.PALETTE["blue"]
    assert score_image(half, description)["colour"] in ("red", "blue")
    assert rate([{"colour": "red"}, {"colour": "blue"}], "red") == 0.5


def test_world_folder_has_every_part(toy_world_dir):
    description = json.loads((toy_world_dir / "world.json").read_text(encoding="utf-8"))
    assert description["trigger"] == "zkz" and description["concept_prompt"] == "zkz"
    assert set(description) >= {"concept_colour", "background_colour", "palette", "base_prompts"}
    assert set(description["base_prompts"].values()) == set(description["palette"])
    concept = sorted((toy_world_dir / "concept" / "10_zkz").glob("*.png"))
    assert 8 <= len(concept) <= 20
    assert score_image(Image.open(concept[0]), description)["colour"] == "zkz"
    assert len(list((toy_world_dir / "reg").glob("1_a * *"))) == len(world.PALETTE) * len(world.SHAPES)
    assert len(list((toy_world_dir / "images").rglob("*.png"))) == 40 * len(world.PALETTE) * len(world.SHAPES)
    assert (toy_world_dir / "toy_sdxl.safetensors").is_file() and (toy_world_dir / "diffusers" / "model_index.json").is_file()


def test_rebuilding_reuses_the_model(toy_world_dir):
    from tools.toy_world.build import build_world

    before = (toy_world_dir / "toy_sdxl.safetensors").stat().st_mtime_ns
    messages = []
    report = build_world(toy_world_dir, log=messages.append, progress=False)
    assert (toy_world_dir / "toy_sdxl.safetensors").stat().st_mtime_ns == before
    assert any("reusing" in m for m in messages) and report["fingerprint"]


def test_diffusers_copy_draws_what_the_single_file_draws(toy_world_dir):
    from library.generation.sampling import Settings, generate
    from library.models.sdxl_loader import load_sdxl

    settings = Settings(64, 64, 8, 5.0, "ddim")
    single = generate(load_sdxl(toy_world_dir / "toy_sdxl.safetensors"), "a red circle", "", 3, settings)
    folder = generate(load_sdxl(toy_world_dir / "diffusers"), "a red circle", "", 3, settings)
    assert np.array_equal(np.asarray(single), np.asarray(folder))


def test_lora_teaches_the_concept_and_keeps_the_base(toy_world_dir, tmp_path):
    """The shipped recipe (train_config/toy_world) through sdxl_train_network.main, scored on 16 seeds."""
    from tools.toy_world.learning import measure, train

    train(toy_world_dir, tmp_path / "lora", "LoRA")
    result = measure(toy_world_dir, tmp_path / "lora", 160)
    base = result["base_accuracy"]
    assert base["w0"]["min"] >= 0.8, base  # the base model draws every base prompt's colour
    assert result["concept_rate"]["w0"] <= 0.2, result  # the trigger means nothing to the base
    assert result["concept_rate"]["w1"] >= 0.8, result  # ... and the concept colour with the LoRA
    assert base["w1"]["min"] >= 0.6, base  # the other prompts keep their colours
