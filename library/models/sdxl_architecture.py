"""SDXL model configurations: the real SDXL 1.0 base configs, and inference of configs from shapes.

Single-file checkpoints carry no config, so the architecture is read off tensor shapes. Values that
shapes cannot reveal follow SDXL's own conventions, which the tiny test model shares: 64-channel
attention heads (UNet and both text encoders), 32 GroupNorm groups, 256-wide time-id embeddings,
quick_gelu in TE1 and gelu in TE2. Real SDXL and the tiny model therefore load through one path.
"""
from __future__ import annotations

import re

from library.errors import UserError
from library.models.text_encoder_names import TE1_PREFIX, TE2_PREFIX

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
HEAD_DIM = 64
ADDITION_TIME_EMBED_DIM = 256
VAE_SCALE_FACTOR_SDXL = 0.13025

SDXL_UNET_CONFIG = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],  # diffusers' historical name: these are head counts
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}

SDXL_TE1_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}

SDXL_TE2_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

SDXL_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": VAE_SCALE_FACTOR_SDXL,
    "force_upcast": True,
}

# Token ids every CLIP tokenizer of SDXL uses; eos 49407 (not the legacy 2) keeps pooling right
# when new tokens are added (pivotal tuning).
CLIP_TOKEN_IDS = {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}

SDXL_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "clip_sample": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}


def _indices(shapes: dict, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in shapes if (m := regex.match(key))})


def _require(shapes: dict, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise UserError(f"the checkpoint has no '{key}', so its {what} cannot be determined; is it a complete SDXL model?")
    return tuple(shapes[key])


def infer_unet_config(shapes: dict) -> dict:
    """diffusers UNet2DConditionModel config from SAI-layout UNet keys (prefix already removed)."""
    conv_in = _require(shapes, "input_blocks.0.0.weight", "UNet input")
    if "label_emb.0.0.weight" not in shapes:
        raise UserError("the UNet has no 'label_emb' (SDXL's size/crop conditioning): this is an SD 1.x/2.x model, not SDXL")
    in_channels = conv_in[1]
    out_channels = _require(shapes, "out.2.weight", "UNet output")[0]
    input_blocks = _indices(shapes, r"input_blocks\.(\d+)\.")
    downsamplers = [i for i in input_blocks if f"input_blocks.{i}.0.op.weight" in shapes]
    num_levels = len(downsamplers) + 1
    layers = (len(input_blocks) - 1 - len(downsamplers)) // num_levels
    channels, depths, attention = [], [], []
    for level in range(num_levels):
        block = (layers + 1) * level + 1
        channels.append(_require(shapes, f"input_blocks.{block}.0.out_layers.3.weight", "block widths")[0])
        has_attention = f"input_blocks.{block}.1.proj_in.weight" in shapes
        attention.append(has_attention)
        depth = len(_indices(shapes, rf"input_blocks\.{block}\.1\.transformer_blocks\.(\d+)\.")) if has_attention else 1
        depths.append(max(depth, 1))
    attn2 = next((k for k in shapes if k.endswith("attn2.to_k.weight")), None)
    if attn2 is None:
        raise UserError("the UNet has no cross-attention layers; it is not an SDXL UNet")
    proj_in = next(k for k in shapes if k.endswith(".proj_in.weight"))
    label_in = shapes["label_emb.0.0.weight"][1]
    mid_depth = len(_indices(shapes, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if mid_depth != depths[-1]:
        raise UserError(f"unsupported UNet: middle block depth {mid_depth} differs from the last level's {depths[-1]}")
    return {
        "sample_size": 128,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "transformer_layers_per_block": depths,
        "attention_head_dim": [max(c // HEAD_DIM, 1) for c in channels],
        "cross_attention_dim": shapes[attn2][1],
        "use_linear_projection": len(shapes[proj_in]) == 2,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
        "projection_class_embeddings_input_dim": label_in,
        "norm_num_groups": 32,
    }


def _clip_config(vocab: int, hidden: int, intermediate: int, layers: int, positions: int, activation: str,
                 projection: int) -> dict:
    return {"vocab_size": vocab, "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": max(hidden // HEAD_DIM, 1), "max_position_embeddings": positions, "hidden_act": activation,
            "projection_dim": projection, **CLIP_TOKEN_IDS}


def infer_te1_config(shapes: dict) -> dict:
    """CLIPTextConfig kwargs from TE1 keys (HF naming, TE1_PREFIX removed, `text_model.` level kept)."""
    vocab, hidden = _require(shapes, "text_model.embeddings.token_embedding.weight", "text encoder 1")
    layers = _indices(shapes, r"text_model\.encoder\.layers\.(\d+)\.")
    return _clip_config(vocab, hidden, shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0], len(layers),
                        shapes["text_model.embeddings.position_embedding.weight"][0], "quick_gelu", hidden)


def infer_te2_config(shapes: dict) -> dict:
    """CLIPTextConfig kwargs from OpenCLIP TE2 keys (TE2_PREFIX removed)."""
    vocab, hidden = _require(shapes, "token_embedding.weight", "text encoder 2")
    layers = _indices(shapes, r"transformer\.resblocks\.(\d+)\.")
    projection = _require(shapes, "text_projection", "text encoder 2 projection")[1]
    return _clip_config(vocab, hidden, shapes["transformer.resblocks.0.mlp.c_fc.weight"][0], len(layers),
                        shapes["positional_embedding"][0], "gelu", projection)


def infer_vae_config(shapes: dict) -> dict:
    """AutoencoderKL config from ldm VAE keys (VAE_PREFIX removed)."""
    conv_in = _require(shapes, "encoder.conv_in.weight", "VAE")
    levels = _indices(shapes, r"encoder\.down\.(\d+)\.")
    channels = [shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in levels]
    layers = len(_indices(shapes, r"encoder\.down\.0\.block\.(\d+)\."))
    return {
        "in_channels": conv_in[1],
        "out_channels": _require(shapes, "decoder.conv_out.weight", "VAE decoder")[0],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "latent_channels": shapes["decoder.conv_in.weight"][1],
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": VAE_SCALE_FACTOR_SDXL,
        "force_upcast": True,
    }


def split_checkpoint_shapes(shapes: dict) -> dict[str, dict]:
    """Group a single-file checkpoint's keys by component, prefixes removed."""
    groups = {"unet": {}, "te1": {}, "te2": {}, "vae": {}}
    prefixes = {"unet": UNET_PREFIX, "te1": TE1_PREFIX, "te2": TE2_PREFIX, "vae": VAE_PREFIX}
    for key, shape in shapes.items():
        for name, prefix in prefixes.items():
            if key.startswith(prefix):
                groups[name][key[len(prefix):]] = shape
                break
    return groups
