"""`network_module = "lycoris.kohya"` for SDXL: LyCORIS' algorithms, our file names.

LyCORIS names modules after the in-memory model: `lora_unet_down_blocks_...` (diffusers UNet
paths) and `lora_te1_encoder_layers_...` (transformers 5's CLIPTextModel has no `text_model`
level). ComfyUI and A1111 load neither, and diffusers silently drops one style when a file mixes
them. This wrapper keeps LyCORIS' modules and math, and translates names at the file boundary:
saved files use `lora_unet_<SAI path>` and `lora_te{1,2}_text_model_...` (DESIGN.md 4.1), loaded
files are normalised from any accepted spelling back to LyCORIS' names.

DoRA (`dora_wd`) defaults to `wd_on_output = False`, the variant ComfyUI and A1111/Forge reproduce
(library/lora/file_io.consumer_warnings says who reproduces what). Files LyCORIS 4.1.3 cannot
rebuild (per-input DoRA, Tucker LoKr) are loaded through library/lora/lycoris_loading.py.

It also repairs LyCORIS 4.1.3's default "full" preset on the diffusers SDXL UNet: that preset
targets the TimestepEmbedding class and names its children again (time_embedding.linear_1/2),
which makes LyCORIS abort with "duplicated lora name". Names already covered by a targeted class
are dropped from the preset. Merging uses library.lora.weights_math, which applies alpha/rank once
as ComfyUI, A1111 and LyCORIS' own forward do (LyCORIS 4.1.3's merge applies it twice for
LoHa/LoKr).

The trainer resolves "lycoris.kohya" to this module (library.lora.network_modules).
"""
from __future__ import annotations

import contextlib
import copy
import functools
import itertools

import torch

from library.errors import UserError
from library.lora import network_args as na
from library.lora import weights_math
from library.lora.file_io import TUCKER_LOKR_NOTE, load_lora_for_model, save_lora
from library.lora.lycoris_loading import lycoris_loading_fixes
from library.lora.naming import ModelNames, split_key

# The network_args lycoris.kohya.create_network reads (LyCORIS 4.1.3); anything else is a typo.
_LYCORIS_ARGS = (
    "algo", "preset", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "use_tucker",
    "use_conv_cp", "use_cp", "disable_conv_cp", "use_scalar", "block_size", "train_norm", "constraint",
    "rescaled", "dora_wd", "wd_on_output", "full_matrix", "bypass_mode", "rs_lora", "unbalanced_factorization",
    "factor", "decompose_both", "loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
    "rank_dropout_scale", "train_t5xxl", "train_llm_adapter",
    "train_on_input",  # the kohya_ss GUI writes it for every iA3 network; LyCORIS does not read it (nor do we)
)
_ALGOS = ("lora", "locon", "loha", "lokr", "dylora", "full", "diag-oft", "boft", "glora", "ia3")
_preset_counter = itertools.count()


def _as_list(text_encoder) -> list:
    if text_encoder is None:
        return []
    return list(text_encoder) if isinstance(text_encoder, (list, tuple)) else [text_encoder]


def _check_args(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - set(_LYCORIS_ARGS))
    if unknown:
        raise UserError(f"network_args: unknown argument '{unknown[0]}' for lycoris.kohya "
                        f"(known: {', '.join(sorted(_LYCORIS_ARGS))})")
    algo = str(kwargs.get("algo", "lora")).lower()
    if algo not in _ALGOS:
        raise UserError(f"network_args: algo={algo!r} is not a LyCORIS algorithm ({', '.join(_ALGOS)})")
    for key in ("conv_dim", "factor", "block_size"):
        if kwargs.get(key) is not None:
            try:
                int(kwargs[key])
            except (TypeError, ValueError):
                raise UserError(f"network_args: {key}={kwargs[key]!r} is not valid: expected an integer") from None
    for key in ("conv_alpha", "dropout", "rank_dropout", "module_dropout", "constraint"):
        if kwargs.get(key) is not None:
            na.parse_args({key: kwargs[key]}, {key: na.as_float}, "lycoris.kohya")
    tucker = any(str(kwargs.get(k, False)).lower() not in ("false", "none") for k in ("use_tucker", "use_cp", "use_conv_cp"))
    if algo == "lokr" and tucker:
        print(f"note: network_args algo=lokr with use_tucker: {TUCKER_LOKR_NOTE}")
    return kwargs


def _sdxl_preset(preset_name: str, unet) -> dict:
    """The preset with target names that a targeted class already covers removed."""
    from lycoris.config import PRESET
    from lycoris.utils.preset import read_preset

    preset = PRESET.get(preset_name) or read_preset(preset_name)
    if preset is None:
        raise UserError(f"network_args: preset={preset_name!r} is neither a LyCORIS preset "
                        f"({', '.join(PRESET)}) nor a readable preset .toml file")
    preset = copy.deepcopy(preset)
    classes = set(preset.get("unet_target_module") or ())
    covered = set()
    for path, module in unet.named_modules():
        if type(module).__name__ in classes:
            covered.update(f"{path}.{child}" if child else path for child, _ in module.named_modules())
    if preset.get("unet_target_name"):
        preset["unet_target_name"] = [n for n in preset["unet_target_name"] if n not in covered]
    return preset


@contextlib.contextmanager
def _registered(preset: dict):
    """Register a preset under a private name for the duration of one create_network call."""
    from lycoris.config import PRESET

    name = f"_sdxl_toolkit_{next(_preset_counter)}"
    PRESET[name] = preset
    try:
        yield name
    finally:
        PRESET.pop(name, None)


def _lycoris_name(ref) -> str:
    """The name LyCORIS gives a module: prefix + in-memory path with dots as underscores."""
    prefix = "lora_unet" if ref.component == "unet" else f"lora_{ref.component}"
    return f"{prefix}_{ref.path.replace('.', '_')}"


@functools.cache
def _network_class():
    from lycoris.kohya import LycorisNetworkKohya

    class SDXLLycorisNetwork(LycorisNetworkKohya):
        """LycorisNetworkKohya whose files use the toolkit's names; built by the functions below."""

        def _init_names(self, unet, text_encoders) -> None:
            self.names = ModelNames(unet, text_encoders)
            self._file_to_lyco = {name: _lycoris_name(ref) for name, ref in self.names.refs.items()}
            self._lyco_to_file = {v: k for k, v in self._file_to_lyco.items()}

        def file_state_dict(self) -> dict:
            """The modules' weights under file names (SAI UNet, text_model_ text encoders).

            Read from the modules themselves: LyCORIS registers them only in apply_to, so the
            network's own state_dict() is empty before that.
            """
            out = {}
            for module in self.loras:
                if module.lora_name not in self._lyco_to_file:
                    raise RuntimeError(f"LyCORIS module {module.lora_name} has no file name")
                for suffix, value in module.state_dict().items():
                    out[f"{self._lyco_to_file[module.lora_name]}.{suffix}"] = value
            return out

        def to_lycoris_names(self, canonical_sd: dict) -> dict:
            out = {}
            for key, value in canonical_sd.items():
                name, suffix = split_key(key)
                out[f"{self._file_to_lyco[name]}.{suffix}"] = value
            return out

        def save_weights(self, file, dtype=None, metadata=None):
            return save_lora(file, self.file_state_dict(), metadata, dtype)

        def load_weights(self, file):
            """Load a file into the modules (registered by apply_to or not); foreign keys are errors."""
            canonical, _ = load_lora_for_model(file, self.names)
            self.weights_sd = self.to_lycoris_names(canonical)
            expected = {f"{m.lora_name}.{k}" for m in self.loras for k in m.state_dict()}
            unexpected = sorted(set(self.weights_sd) - expected)
            if unexpected:
                raise UserError(f"{file}: {len(unexpected)} keys are not modules of this network (different "
                                f"algo/preset/dims?): {', '.join(unexpected[:10])}")
            for module in self.loras:
                prefix = module.lora_name + "."
                own = {k[len(prefix):]: v for k, v in self.weights_sd.items() if k.startswith(prefix)}
                if own:
                    module.load_state_dict(own, strict=False)
            return {"missing keys": sorted(expected - set(self.weights_sd)), "unexpected keys": []}

        @torch.no_grad()
        def merge_to(self, text_encoder=None, unet=None, weights_sd=None, dtype=None, device=None):
            """Add every module's effect into the model weights (alpha/rank applied once)."""
            for module in self.loras:
                group = {k: v for k, v in module.state_dict().items()}
                org = module.org_module[0]
                org.weight.data.copy_(weights_math.apply_group(org.weight.data, group, module.multiplier))

    return SDXLLycorisNetwork


def _adopt(network, unet, text_encoders):
    network.__class__ = _network_class()
    network._init_names(unet, text_encoders)
    return network


def _bypass_for_fp8(kwargs: dict, unet, text_encoders) -> None:
    """fp8 base weights (fp8_base): LyCORIS must add its output to the base layer's (bypass mode)
    instead of rebuilding W + dW from the fp8 weight, which it cannot do."""
    fp8 = any(p.dtype == torch.float8_e4m3fn for model in [unet, *text_encoders] for p in model.parameters())
    if not fp8:
        return
    if str(kwargs.get("bypass_mode", "true")).lower() in ("false", "0", "no"):
        raise UserError("network_args bypass_mode=false cannot train on fp8 base weights (fp8_base); remove it")
    kwargs["bypass_mode"] = "true"


def create_network(multiplier, network_dim, network_alpha, vae, text_encoder, unet, neuron_dropout=None, **kwargs):
    import lycoris.kohya as lycoris_kohya

    kwargs = dict(kwargs)
    if neuron_dropout is not None:  # kohya's trainer passes network_dropout this way to every module
        kwargs.setdefault("dropout", str(neuron_dropout))
    kwargs = _check_args(kwargs)
    _bypass_for_fp8(kwargs, unet, _as_list(text_encoder))
    if str(kwargs.get("dora_wd", False)).lower() != "false" and "wd_on_output" not in kwargs:  # LyCORIS' str_bool
        # The DoRA variant every consumer reproduces (ComfyUI, A1111/Forge, LyCORIS, this toolkit);
        # LyCORIS' own default (True) is reproduced by LyCORIS and this toolkit only.
        kwargs["wd_on_output"] = "False"
    preset = _sdxl_preset(str(kwargs.pop("preset", "full")), unet)
    text_encoders = _as_list(text_encoder)
    with _registered(preset) as preset_name:
        network = lycoris_kohya.create_network(multiplier, network_dim, network_alpha, vae, text_encoders, unet,
                                               preset=preset_name, **kwargs)
    return _adopt(network, unet, text_encoders)


def create_network_from_weights(multiplier, file, vae, text_encoder, unet, weights_sd=None, for_inference=False,
                                **kwargs):
    """(network built from the file's modules, the file's weights under LyCORIS' names)."""
    import lycoris.kohya as lycoris_kohya

    text_encoders = _as_list(text_encoder)
    names = ModelNames(unet, text_encoders)
    canonical, _ = load_lora_for_model(file if weights_sd is None else weights_sd, names)
    lyco_sd = {f"{_lycoris_name(names.ref(split_key(k)[0]))}.{split_key(k)[1]}": v for k, v in canonical.items()}
    # LyCORIS first builds a throw-away network with the class-level preset; make that one buildable.
    lycoris_kohya.LycorisNetworkKohya.apply_preset(_sdxl_preset("full", unet))
    with lycoris_loading_fixes():  # DoRA per-input magnitudes and Tucker LoKr, which LyCORIS 4.1.3 cannot rebuild
        network, _ = lycoris_kohya.create_network_from_weights(multiplier, None, vae, text_encoders, unet,
                                                               weights_sd=lyco_sd, for_inference=for_inference)
    # ... and leaves its `loras` list pointing at that throw-away network's modules.
    network.loras = network.text_encoder_loras + network.unet_loras
    built = {m.lora_name for m in network.unet_loras + network.text_encoder_loras}
    unbuilt = sorted({split_key(k)[0] for k in lyco_sd} - built)
    if unbuilt:
        raise UserError(f"{file}: LyCORIS could not build {len(unbuilt)} modules from the file, e.g. {unbuilt[:5]}")
    return _adopt(network, unet, text_encoders), lyco_sd
