"""The tiny SDXL-architecture model used by tests, the demo and benchmarks.

Same topology as SDXL (three UNet levels with no attention at the first, transformer depth 2 at the
deeper levels, `text_time` conditioning, linear proj_in/out, CLIP ViT-L-style TE1 plus an
OpenCLIP-style TE2 with projection, a 4-channel 8x VAE) and the real 49,408-token vocabulary, but
small widths. The two text encoders have different widths so a converter that mixes them up fails.
"""
from __future__ import annotations

from pathlib import Path

import torch

from library.models.sdxl_architecture import ADDITION_TIME_EMBED_DIM, CLIP_TOKEN_IDS, SDXL_VAE_CONFIG

TE1_WIDTH, TE2_WIDTH = 64, 128

TINY_UNET_CONFIG = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 2],
    "attention_head_dim": [1, 1, 2],
    "cross_attention_dim": TE1_WIDTH + TE2_WIDTH,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": TE2_WIDTH + 6 * ADDITION_TIME_EMBED_DIM,
    "norm_num_groups": 32,
}

TINY_TE1_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": TE1_WIDTH,
    "intermediate_size": 4 * TE1_WIDTH,
    "num_hidden_layers": 3,
    "num_attention_heads": 1,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": TE1_WIDTH,
    **CLIP_TOKEN_IDS,
}

TINY_TE2_CONFIG = {
    **TINY_TE1_CONFIG,
    "hidden_size": TE2_WIDTH,
    "intermediate_size": 4 * TE2_WIDTH,
    "num_attention_heads": 2,
    "hidden_act": "gelu",
    "projection_dim": TE2_WIDTH,
}

TINY_VAE_CONFIG = {**SDXL_VAE_CONFIG, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 128}

SINGLE_FILE_NAME = "sdxl_tiny.safetensors"


def build_components(unet_config: dict, te1_config: dict, te2_config: dict, vae_config: dict, seed: int = 0):
    """(unet, text_encoder1, text_encoder2, vae) built from configs, with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config)
    text_encoder1 = CLIPTextModel(CLIPTextConfig(**te1_config))
    text_encoder2 = CLIPTextModelWithProjection(CLIPTextConfig(**te2_config))
    vae = AutoencoderKL(**vae_config)
    return tuple(m.eval() for m in (unet, text_encoder1, text_encoder2, vae))


def build_tiny_components(seed: int = 0):
    """The tiny model's (unet, text_encoder1, text_encoder2, vae) with seeded random weights."""
    return build_components(TINY_UNET_CONFIG, TINY_TE1_CONFIG, TINY_TE2_CONFIG, TINY_VAE_CONFIG, seed)


def write_tiny_sdxl(output_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the tiny model as a diffusers folder and as an original-layout single file."""
    from library.models.sdxl_diffusers import save_diffusers_folder
    from library.models.sdxl_single_file import save_single_file
    from library.models.tokenizers import packaged_clip_tokenizers

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    unet, te1, te2, vae = build_tiny_components(seed)
    diffusers_dir = output_dir / "diffusers"
    save_diffusers_folder(diffusers_dir, unet, te1, te2, vae, packaged_clip_tokenizers())
    single_file = output_dir / SINGLE_FILE_NAME
    save_single_file(single_file, unet, te1, te2, vae, metadata={"modelspec.title": f"tiny SDXL (seed {seed})"})
    return {"diffusers": diffusers_dir, "single_file": single_file}
