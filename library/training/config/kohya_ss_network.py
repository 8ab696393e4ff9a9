"""The network of a kohya_ss GUI file: `LoRA_type` and its knobs -> network_module + network_args.

The GUI's train button builds `network_args` as a text of `key=value` words per LoRA type
(kohya_gui/lora_gui.py) and splits it on whitespace after removing double quotes; the words below
are the ones it writes for an SDXL LoRA, values formatted as Python prints them ("False", "0.1").
"""
from __future__ import annotations

from library.errors import UserError

# the knobs of kohya's networks.lora the GUI forwards when they are set (non-empty, non-zero)
_KOHYA_LORA_KNOBS = ("down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                     "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout")

# LyCORIS types: algo and the GUI's words, in the GUI's order (some words twice, as it writes them)
_LYCORIS = {
    "LyCORIS/LoCon": ("locon", "preset conv_dim conv_alpha use_tucker rank_dropout bypass_mode dora_wd module_dropout use_tucker "
                               "use_scalar rank_dropout_scale"),
    "LyCORIS/LoHa": ("loha", "preset conv_dim conv_alpha use_tucker rank_dropout bypass_mode dora_wd module_dropout use_tucker "
                             "use_scalar rank_dropout_scale"),
    "LyCORIS/LoKr": ("lokr", "preset conv_dim conv_alpha use_tucker rank_dropout bypass_mode dora_wd module_dropout factor use_cp "
                             "use_scalar decompose_both rank_dropout_scale"),
    "LyCORIS/iA3": ("ia3", "preset conv_dim conv_alpha train_on_input"),
    "LyCORIS/DyLoRA": ("dylora", "preset conv_dim conv_alpha use_tucker block_size rank_dropout module_dropout"),
    "LyCORIS/GLoRA": ("glora", "preset conv_dim conv_alpha use_tucker rank_dropout module_dropout rank_dropout_scale"),
    "LyCORIS/Diag-OFT": ("diag-oft", "preset conv_dim conv_alpha module_dropout use_tucker rank_dropout rank_dropout_scale "
                                     "constraint rescaled"),
    "LyCORIS/BOFT": ("boft", "preset conv_dim conv_alpha module_dropout use_tucker rank_dropout rank_dropout_scale"),
    "LyCORIS/Native Fine-Tuning": ("full", "preset rank_dropout module_dropout rank_dropout_scale"),
}
_GUI_NAME = {"preset": "LyCORIS_preset", "block_size": "unit", "constraint": "constrain"}  # network arg -> GUI key
_NO_TRAIN_NORM = {"LyCORIS/iA3"}  # every other LyCORIS type ends with train_norm=

# the GUI's values for these knobs when a file does not have them (a fresh GUI's controls)
KNOB_DEFAULTS = {
    "LyCORIS_preset": "full", "conv_dim": 1, "conv_alpha": 1, "use_tucker": False, "use_cp": False, "use_scalar": False,
    "rank_dropout_scale": False, "bypass_mode": False, "dora_wd": False, "train_norm": False, "decompose_both": False,
    "train_on_input": True, "factor": -1, "unit": 1, "constrain": 0.0, "rescaled": False, "rank_dropout": 0,
    "module_dropout": 0, "loraplus_lr_ratio": 0, "loraplus_unet_lr_ratio": 0, "loraplus_text_encoder_lr_ratio": 0,
    **{key: "" for key in _KOHYA_LORA_KNOBS if key not in ("rank_dropout", "module_dropout")},
}

# every GUI key read here (the caller counts them as used)
KNOBS = frozenset(KNOB_DEFAULTS) | {"LoRA_type"}

_OTHER_MODELS = {"Flux1", "Flux1 OFT", "HunyuanImage-2.1", "Anima", "Lumina"}
_KOHYA_NATIVE = {"Kohya LoHa": "LyCORIS/LoHa", "Kohya LoKr": "LyCORIS/LoKr"}


def _set_words(gui: dict, keys) -> list[str]:
    """`key=value` for each knob that is set (the GUI skips empty and zero values)."""
    return [f"{key}={gui[key]}" for key in keys if gui[key] not in ("", None, 0, False)]


def network_settings(gui: dict, where: str) -> tuple[str, list[str]]:
    """(network_module, network_args) the GUI passes to sdxl_train_network.py for `gui` (a GUI file
    with its missing knobs filled from KNOB_DEFAULTS)."""
    lora_type = gui.get("LoRA_type") or "Standard"
    if lora_type == "LoCon":  # the GUI's old name, renamed when it loads a file
        lora_type = "LyCORIS/LoCon"
    if lora_type in ("Standard", "Kohya LoCon"):
        words = [f"conv_dim={gui['conv_dim']}", f"conv_alpha={gui['conv_alpha']}"] if lora_type == "Kohya LoCon" else []
        module, words = "networks.lora", words + _set_words(gui, _KOHYA_LORA_KNOBS)
    elif lora_type == "LoRA-FA":
        module, words = "networks.lora_fa", _set_words(gui, _KOHYA_LORA_KNOBS)
    elif lora_type == "Kohya DyLoRA":
        module, words = "networks.dylora", _set_words(gui, ("conv_dim", "conv_alpha", *_KOHYA_LORA_KNOBS, "unit"))
    elif lora_type in _LYCORIS:
        algo, names = _LYCORIS[lora_type]
        words = [f"{name}={gui[_GUI_NAME.get(name, name)]}" for name in names.split()] + [f"algo={algo}"]
        if lora_type not in _NO_TRAIN_NORM:
            words.append(f"train_norm={gui['train_norm']}")
        module = "lycoris.kohya"
    elif lora_type in _KOHYA_NATIVE:
        raise UserError(f"{where} LoRA_type = {lora_type!r} trains kohya's newer native module, which this toolkit does not "
                        f"ship; use LoRA_type = {_KOHYA_NATIVE[lora_type]!r} (lycoris.kohya), the same algorithm")
    elif lora_type in _OTHER_MODELS:
        raise UserError(f"{where} LoRA_type = {lora_type!r} is a LoRA for another model; this trainer trains SDXL LoRAs")
    else:
        raise UserError(f"{where} LoRA_type = {lora_type!r} is not a kohya_ss GUI LoRA type this toolkit knows "
                        "(Standard, Kohya LoCon, LoRA-FA, Kohya DyLoRA, LyCORIS/...)")
    words += _set_words(gui, ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"))
    return module, " ".join(words).replace('"', "").split()  # the GUI's own split: a value cannot hold spaces
