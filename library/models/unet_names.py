"""UNet names: diffusers' UNet2DConditionModel <-> the original Stability ("SAI"/ldm) layout.

The same table converts whole state dicts (single-file checkpoints) and module paths (kohya LoRA
key names), so a checkpoint and a LoRA can never disagree on what a name means. Rules, for SDXL
with L = layers_per_block (2):
  down_blocks.i.(resnets|attentions).j -> input_blocks.((L+1)i+j+1).(0|1)
  down_blocks.i.downsamplers.0.conv    -> input_blocks.((L+1)(i+1)).0.op
  mid_block.resnets.j / attentions.0   -> middle_block.(2j) / middle_block.1
  up_blocks.i.(resnets|attentions).j   -> output_blocks.((L+1)i+j).(0|1)
  up_blocks.i.upsamplers.0.conv        -> output_blocks.((L+1)i+L).(2 if the level has attention else 1).conv
  resnet norm1/conv1/time_emb_proj/norm2/conv2/conv_shortcut
                                       -> in_layers.0/in_layers.2/emb_layers.1/out_layers.0/out_layers.3/skip_connection
Names inside transformer blocks (attn1.to_q, ff.net.0.proj, proj_in, ...) are identical in both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

_TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}

_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


@dataclass(frozen=True)
class UNetLayout:
    """The block topology that decides SAI block indices (SDXL: 3 levels, 2 layers, attention at 1 and 2)."""

    num_levels: int = 3
    layers_per_block: int = 2
    down_attention_levels: tuple[int, ...] = (1, 2)
    _d2s: dict = field(default_factory=dict, compare=False, repr=False)
    _s2d: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        d2s = dict(_TOP_LEVEL)
        resnet_prefixes_d = set()
        step = self.layers_per_block + 1
        for level in range(self.num_levels):
            for j in range(self.layers_per_block):
                sai = f"input_blocks.{step * level + j + 1}"
                d2s[f"down_blocks.{level}.resnets.{j}"] = f"{sai}.0"
                resnet_prefixes_d.add(f"down_blocks.{level}.resnets.{j}")
                if level in self.down_attention_levels:
                    d2s[f"down_blocks.{level}.attentions.{j}"] = f"{sai}.1"
            if level < self.num_levels - 1:
                d2s[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{step * (level + 1)}.0.op"
        d2s["mid_block.resnets.0"] = "middle_block.0"
        d2s["mid_block.attentions.0"] = "middle_block.1"
        d2s["mid_block.resnets.1"] = "middle_block.2"
        resnet_prefixes_d.update({"mid_block.resnets.0", "mid_block.resnets.1"})
        for up in range(self.num_levels):
            level_has_attention = (self.num_levels - 1 - up) in self.down_attention_levels
            for j in range(self.layers_per_block + 1):
                sai = f"output_blocks.{step * up + j}"
                d2s[f"up_blocks.{up}.resnets.{j}"] = f"{sai}.0"
                resnet_prefixes_d.add(f"up_blocks.{up}.resnets.{j}")
                if level_has_attention:
                    d2s[f"up_blocks.{up}.attentions.{j}"] = f"{sai}.1"
            if up < self.num_levels - 1:
                slot = 2 if level_has_attention else 1
                d2s[f"up_blocks.{up}.upsamplers.0.conv"] = f"output_blocks.{step * up + self.layers_per_block}.{slot}.conv"
        object.__setattr__(self, "_d2s", d2s)
        object.__setattr__(self, "_s2d", {v: k for k, v in d2s.items()})
        object.__setattr__(self, "_resnets_d", frozenset(resnet_prefixes_d))
        object.__setattr__(self, "_resnets_s", frozenset(d2s[p] for p in resnet_prefixes_d))

    # A name is "<block prefix>[.<rest>]"; the longest known prefix wins.
    @staticmethod
    def _split(name: str, table: dict) -> tuple[str, str] | None:
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in table:
                return prefix, ".".join(parts[cut:])
        return None

    def _translate(self, name: str, table: dict, resnets: frozenset, parts: dict) -> str | None:
        found = self._split(name, table)
        if found is None:
            return None
        prefix, rest = found
        if rest and prefix in resnets:
            rest = _map_resnet_part(rest, parts)
            if rest is None:
                return None
        return table[prefix] + ("." + rest if rest else "")

    def to_sai(self, name: str) -> str | None:
        """diffusers name (module path or parameter key) -> SAI name, or None if it has no mapping."""
        return self._translate(name, self._d2s, self._resnets_d, _RESNET_PARTS)

    def to_diffusers(self, name: str) -> str | None:
        """SAI name (module path or parameter key) -> diffusers name, or None if it has no mapping."""
        return self._translate(name, self._s2d, self._resnets_s, _RESNET_PARTS_REVERSED)


_RESNET_PARTS_REVERSED = {v: k for k, v in _RESNET_PARTS.items()}


def _map_resnet_part(rest: str, table: dict) -> str | None:
    parts = rest.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in table:
            tail = ".".join(parts[cut:])
            return table[head] + ("." + tail if tail else "")
    return None


SDXL_UNET_LAYOUT = UNetLayout()


def layout_from_config(config) -> UNetLayout:
    """UNetLayout of a diffusers UNet config (dict or FrozenDict)."""
    down_types = list(config["down_block_types"])
    return UNetLayout(
        num_levels=len(down_types),
        layers_per_block=int(config["layers_per_block"]),
        down_attention_levels=tuple(i for i, t in enumerate(down_types) if "CrossAttn" in t),
    )


class UnmappedKeysError(ValueError):
    def __init__(self, keys):
        self.keys = sorted(keys)
        super().__init__(f"{len(self.keys)} UNet keys have no mapping, e.g. {self.keys[:5]}")


def _rename_all(state_dict: dict, rename) -> dict:
    out, unmapped = {}, []
    for key, value in state_dict.items():
        new_key = rename(key)
        if new_key is None:
            unmapped.append(key)
        else:
            out[new_key] = value
    if unmapped:
        raise UnmappedKeysError(unmapped)
    return out


def unet_state_dict_to_sai(state_dict: dict, layout: UNetLayout = SDXL_UNET_LAYOUT) -> dict:
    return _rename_all(state_dict, layout.to_sai)


def unet_state_dict_to_diffusers(state_dict: dict, layout: UNetLayout = SDXL_UNET_LAYOUT) -> dict:
    return _rename_all(state_dict, layout.to_diffusers)
