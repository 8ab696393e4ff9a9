"""VAE state dicts: diffusers' AutoencoderKL <-> the original ldm layout (`first_stage_model.*`).

The ldm mid-block attention stores q/k/v/proj_out as 1x1 convs ([c, c, 1, 1]); diffusers uses
Linear layers ([c, c]), so those weights are reshaped on the way through.
"""
from __future__ import annotations

_MID_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _prefix_table(num_levels: int, layers_per_block: int) -> dict[str, str]:
    table = {
        "encoder.conv_norm_out": "encoder.norm_out",
        "decoder.conv_norm_out": "decoder.norm_out",
    }
    for part in ("encoder", "decoder"):
        table[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        table[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        for d_name, sai_name in _MID_ATTENTION.items():
            table[f"{part}.mid_block.attentions.0.{d_name}"] = f"{part}.mid.attn_1.{sai_name}"
    for level in range(num_levels):
        for j in range(layers_per_block):
            table[f"encoder.down_blocks.{level}.resnets.{j}"] = f"encoder.down.{level}.block.{j}"
        if level < num_levels - 1:
            table[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = f"encoder.down.{level}.downsample.conv"
        sai_level = num_levels - 1 - level
        for j in range(layers_per_block + 1):
            table[f"decoder.up_blocks.{level}.resnets.{j}"] = f"decoder.up.{sai_level}.block.{j}"
        if level < num_levels - 1:
            table[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = f"decoder.up.{sai_level}.upsample.conv"
    return table


def _rename(key: str, table: dict[str, str]) -> str:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in table:
            return table[prefix] + "." + ".".join(parts[cut:])
    return key


def _is_mid_attention_projection(sai_key: str) -> bool:
    return ".mid.attn_1." in sai_key and sai_key.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and sai_key.endswith(".weight")


def _renames(key: str, table: dict[str, str]) -> str:
    key = _rename(key, table)
    return key.replace("conv_shortcut", "nin_shortcut") if "conv_shortcut" in key else key


def vae_state_dict_to_ldm(state_dict: dict, num_levels: int, layers_per_block: int) -> dict:
    table = _prefix_table(num_levels, layers_per_block)
    out = {}
    for key, value in state_dict.items():
        new_key = _renames(key, table)
        if _is_mid_attention_projection(new_key) and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[new_key] = value
    return out


def vae_state_dict_to_diffusers(state_dict: dict, num_levels: int, layers_per_block: int) -> dict:
    table = {v: k for k, v in _prefix_table(num_levels, layers_per_block).items()}
    out = {}
    for key, value in state_dict.items():
        if _is_mid_attention_projection(key) and value.ndim == 4:
            value = value.reshape(value.shape[0], value.shape[1])
        new_key = _rename(key, table)
        out[new_key.replace("nin_shortcut", "conv_shortcut")] = value
    return out
