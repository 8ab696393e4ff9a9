"""Model sizes the benchmark runs on: `tiny` (the test model), `small` (SDXL topology, tens of
millions of parameters, built like the tiny one) and `sdxl` (a real checkpoint given by path).

`small` keeps every convention the single-file loader infers from shapes (64-channel heads,
32 GroupNorm groups, 256-wide time ids), so it loads through the same code path as real SDXL.
"""
from __future__ import annotations

from pathlib import Path


from library.models import tiny_sdxl
from library.models.sdxl_architecture import ADDITION_TIME_EMBED_DIM

SMALL_TE1_WIDTH, SMALL_TE2_WIDTH = 128, 256

SMALL_UNET_CONFIG = {
    **tiny_sdxl.TINY_UNET_CONFIG,
    "sample_size": 32,
    "block_out_channels": [64, 128, 256],
    "transformer_layers_per_block": [1, 2, 2],
    "attention_head_dim": [1, 2, 4],  # head counts (diffusers' name): 64-channel heads as SDXL
    "cross_attention_dim": SMALL_TE1_WIDTH + SMALL_TE2_WIDTH,
    "projection_class_embeddings_input_dim": SMALL_TE2_WIDTH + 6 * ADDITION_TIME_EMBED_DIM,
}

SMALL_TE1_CONFIG = {
    **tiny_sdxl.TINY_TE1_CONFIG,
    "hidden_size": SMALL_TE1_WIDTH,
    "intermediate_size": 4 * SMALL_TE1_WIDTH,
    "num_hidden_layers": 4,
    "num_attention_heads": SMALL_TE1_WIDTH // 64,
    "projection_dim": SMALL_TE1_WIDTH,
}

SMALL_TE2_CONFIG = {
    **tiny_sdxl.TINY_TE2_CONFIG,
    "hidden_size": SMALL_TE2_WIDTH,
    "intermediate_size": 4 * SMALL_TE2_WIDTH,
    "num_hidden_layers": 4,
    "num_attention_heads": SMALL_TE2_WIDTH // 64,
    "projection_dim": SMALL_TE2_WIDTH,
}

SMALL_VAE_CONFIG = {
    **tiny_sdxl.TINY_VAE_CONFIG,
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 2,
    "sample_size": 256,
}

CONFIGS = {
    "tiny": (tiny_sdxl.TINY_UNET_CONFIG, tiny_sdxl.TINY_TE1_CONFIG, tiny_sdxl.TINY_TE2_CONFIG, tiny_sdxl.TINY_VAE_CONFIG),
    "small": (SMALL_UNET_CONFIG, SMALL_TE1_CONFIG, SMALL_TE2_CONFIG, SMALL_VAE_CONFIG),
}


def build_components(size: str, seed: int = 0):
    """(unet, text_encoder1, text_encoder2, vae) of a generated size, seeded random weights."""
    return tiny_sdxl.build_components(*CONFIGS[size], seed=seed)


def write_model(size: str, folder: str | Path, seed: int = 0) -> Path:
    """The single-file checkpoint of a generated size (reused when it already exists)."""
    from library.models.sdxl_single_file import save_single_file

    folder = Path(folder)
    path = folder / f"sdxl_{size}_seed{seed}.safetensors"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    unet, te1, te2, vae = build_components(size, seed)
    save_single_file(path, unet, te1, te2, vae, metadata={"modelspec.title": f"{size} SDXL-shaped benchmark model (seed {seed})"})
    return path


def parameter_counts(components) -> dict[str, int]:
    names = ("unet", "text_encoder1", "text_encoder2", "vae")
    return {name: sum(p.numel() for p in module.parameters()) for name, module in zip(names, components)}


def write_diffusers_model(size: str, folder: str | Path, seed: int = 0) -> Path:
    """The same generated model as a diffusers folder with its tokenizers (what diffusers' own training
    scripts read), reused when it exists; written to a temporary folder and renamed into place."""
    import shutil

    from library.models.sdxl_diffusers import save_diffusers_folder
    from library.models.tokenizers import packaged_clip_tokenizers

    folder = Path(folder)
    path = folder / f"sdxl_{size}_seed{seed}_diffusers"
    if (path / "model_index.json").exists():
        return path
    staging = folder / f"{path.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_diffusers_folder(staging, *build_components(size, seed), packaged_clip_tokenizers())
    shutil.rmtree(path, ignore_errors=True)
    staging.rename(path)
    return path
