"""kohya_ss GUI JSON files (its presets and saved configs) read as the GUI's train button reads them.

The GUI turns such a file into a TOML of sd-scripts options plus a command line
(kohya_gui/lora_gui.py train_model); `gui_options` does the same for an SDXL LoRA:

  * missing keys take a fresh GUI's values (GUI_DEFAULTS), as its controls would show them;
    numbers given as strings are numbers, "" is unset;
  * renamed keys: optimizer -> optimizer_type, max_resolution -> resolution, sdxl_no_half_vae ->
    no_half_vae, sdxl_cache_text_encoder_outputs -> cache_text_encoder_outputs, xformers "xformers" /
    "sdpa" -> xformers / sdpa, lora_network_weights -> network_weights;
  * LoRA_type and its knobs -> network_module + network_args (kohya_ss_network.py);
  * noise_offset_type picks noise_offset (Original) or multires noise (Multires);
  * lr_warmup (percent) -> lr_warmup_steps as a fraction, or steps when the GUI knows the total;
  * epoch -> max_train_epochs when neither max_train_epochs nor max_train_steps is set (the GUI
    computes the same step count from the folders); with a dataset_config the GUI leaves
    sd-scripts' default (1600 steps) and so do we;
  * text_encoder_lr / unet_lr of 0 train the other part only (network_train_*_only), as the GUI;
  * zero and false values are left out, as the GUI leaves them out (so max_grad_norm = 0 means
    sd-scripts' default 1.0; a notice says so);
  * additional_parameters are parsed as command-line options and override the file, as on the
    GUI's command line;
  * accelerate launch settings (num_processes, gpu_ids, ...) get a notice when they ask for
    something, since the training script cannot apply them.
Keys the GUI uses for other models or its own bookkeeping are not passed on, as the GUI does not
pass them; other keys with a value are listed in one notice.
"""
from __future__ import annotations

import json
from pathlib import Path

from library.errors import UserError
from library.training.config.kohya_ss_network import KNOB_DEFAULTS, KNOBS, network_settings

# a fresh kohya_ss GUI's LoRA tab, for keys a file does not have (only those that reach sd-scripts)
GUI_DEFAULTS = {
    "optimizer": "AdamW", "max_resolution": "512,512", "learning_rate": 0.0001, "lr_scheduler": "cosine", "lr_warmup": 10,
    "lr_warmup_steps": 0, "text_encoder_lr": 0.0001, "unet_lr": 0.0001, "network_dim": 8, "network_alpha": 1,
    "train_batch_size": 1, "epoch": 1, "max_train_epochs": 0, "max_train_steps": 1600, "save_every_n_epochs": 1,
    "caption_extension": ".txt", "mixed_precision": "fp16", "save_precision": "fp16", "save_model_as": "safetensors",
    "cache_latents": True, "enable_bucket": True, "min_bucket_reso": 256, "max_bucket_reso": 2048, "bucket_reso_steps": 64,
    "bucket_no_upscale": True, "xformers": "xformers", "max_token_length": 75, "max_data_loader_n_workers": 0,
    "max_timestep": 1000, "prior_loss_weight": 1.0, "loss_type": "l2", "huber_c": 0.1, "huber_scale": 1.0,
    "huber_schedule": "snr", "max_grad_norm": 1.0, "noise_offset_type": "Original", "multires_noise_discount": 0.3,
    "sample_sampler": "euler_a", "lr_scheduler_num_cycles": 1, "lr_scheduler_power": 1.0, "clip_skip": 1,
    "dynamo_backend": "no", "sdxl": True,
}

# passed to sd-scripts under the same name (zero / false / empty values left out)
_SAME_NAME = """
async_upload bucket_no_upscale bucket_reso_steps cache_latents cache_latents_to_disk caption_dropout_rate caption_extension
color_aug dataset_config debiased_estimation_loss dynamo_backend dim_from_weights enable_bucket flip_aug fp8_base full_bf16
full_fp16 gradient_checkpointing highvram huber_c huber_scale huber_schedule huggingface_repo_id huggingface_token
huggingface_repo_type huggingface_repo_visibility huggingface_path_in_repo ip_noise_gamma ip_noise_gamma_random_strength
learning_rate logging_dir log_config log_tracker_name log_tracker_config loss_type lr_scheduler lr_scheduler_num_cycles
lr_scheduler_power lr_scheduler_type masked_loss max_bucket_reso max_grad_norm max_timestep max_token_length mem_eff_attn
metadata_author metadata_description metadata_license metadata_tags metadata_title min_bucket_reso min_snr_gamma
min_timestep mixed_precision network_alpha network_dim network_dropout network_weights output_dir output_name
pretrained_model_name_or_path prior_loss_weight random_crop reg_data_dir resume resume_from_huggingface
sample_every_n_epochs sample_every_n_steps sample_sampler save_every_n_epochs save_every_n_steps save_last_n_steps
save_last_n_steps_state save_last_n_epochs save_last_n_epochs_state save_model_as save_precision save_state
save_state_on_train_end save_state_to_huggingface scale_v_pred_loss_like_noise_pred scale_weight_norms shuffle_caption
skip_cache_check train_batch_size train_data_dir training_comment log_with v2 v_parameterization v_pred_like_loss vae
vae_batch_size wandb_api_key weighted_captions
""".split()

# numbers the GUI holds in text boxes or converts itself: (type, value of "" or a bad number)
_NUMBERS = {
    "epoch": (int, 0), "max_train_epochs": (int, 0), "max_train_steps": (int, 0), "seed": (int, 0), "keep_tokens": (int, 0),
    "gradient_accumulation_steps": (int, 1), "max_data_loader_n_workers": (int, 0), "clip_skip": (int, 0),
    "save_every_n_epochs": (int, 0), "caption_dropout_every_n_epochs": (int, 0), "lr_warmup": (float, 0.0),
    "lr_warmup_steps": (float, 0.0), "lr_scheduler_num_cycles": (int, 1), "max_token_length": (int, 75),
    "min_bucket_reso": (int, 256), "lr_scheduler_power": (float, 1.0), "learning_rate": (float, 0.0),
    "text_encoder_lr": (float, 0.0), "unet_lr": (float, 0.0), "noise_offset": (float, 0.0), "adaptive_noise_scale": (float, 0.0),
    "multires_noise_iterations": (int, 0), "multires_noise_discount": (float, 0.0),
}

# `accelerate launch` settings: (key, the value that asks for nothing)
_LAUNCHER = {"num_processes": 1, "num_machines": 1, "gpu_ids": "", "multi_gpu": False, "main_process_port": 0,
             "num_cpu_threads_per_process": 2, "extra_accelerate_launch_args": "", "dynamo_mode": "default",
             "dynamo_use_fullgraph": False, "dynamo_use_dynamic": False}

# GUI keys consumed here besides _SAME_NAME, the network knobs and the launcher
_CONSUMED = {"optimizer", "optimizer_args", "lr_scheduler_args", "max_resolution", "epoch", "max_train_epochs",
             "max_train_steps", "lr_warmup", "lr_warmup_steps", "noise_offset_type", "noise_offset", "adaptive_noise_scale",
             "noise_offset_random_strength", "multires_noise_iterations", "multires_noise_discount", "text_encoder_lr",
             "unet_lr", "t5xxl_lr", "sdxl", "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs", "xformers", "seed",
             "keep_tokens", "gradient_accumulation_steps", "caption_dropout_every_n_epochs", "clip_skip",
             "persistent_data_loader_workers", "max_data_loader_n_workers", "sample_prompts", "wandb_run_name",
             "stop_text_encoder_training", "stop_text_encoder_training_pct", "additional_parameters", "lora_network_weights",
             "use_8bit_adam", "use_wandb", "train_inpainting", "model_list", "training_preset", "save_as_bool", "file_path",
             "network_train_unet_only", "network_train_text_encoder_only"}


def _number(key: str, value):
    kind, fallback = _NUMBERS[key]
    if isinstance(value, bool) or value is None:
        return value
    try:
        return kind(float(value)) if kind is int else float(value)
    except (TypeError, ValueError):
        return fallback  # what the GUI makes of "" or text in a number field


def _unset(value) -> bool:
    """What the GUI leaves out of its TOML: "", None, False, and so 0 and 0.0 (Python's 0 == False)."""
    return not isinstance(value, (list, tuple)) and value in ("", None, False)


def _normalised(data: dict) -> dict:
    """The file as the GUI holds it after loading: old names renamed, numbers parsed, defaults filled."""
    gui = dict(data)
    if "lora_network_weights" in gui:
        gui["network_weights"] = gui.pop("lora_network_weights")
    if "optimizer" not in gui:
        gui["optimizer"] = "AdamW8bit" if gui.get("use_8bit_adam") else "AdamW"
    if isinstance(gui.get("xformers"), bool):
        gui["xformers"] = "xformers" if gui["xformers"] else "none"
    if gui.get("use_wandb") in (True, "True"):
        gui["log_with"] = "wandb"
    gui = {**GUI_DEFAULTS, **KNOB_DEFAULTS, **gui}
    for key in _NUMBERS:
        gui[key] = _number(key, gui.get(key, 0))
    return gui


def _steps(gui: dict, options: dict, notices: list, where: str) -> None:
    """max_train_epochs / max_train_steps / lr_warmup_steps as the GUI computes them."""
    epochs, steps, epoch = gui["max_train_epochs"], gui["max_train_steps"], gui["epoch"]
    if epochs:
        options["max_train_epochs"] = epochs
    if steps:
        options["max_train_steps"] = steps
    elif not epochs and gui.get("dataset_config"):
        notices.append(f"{where} epoch = {epoch} with dataset_config: the kohya_ss GUI passes no step count, so sd-scripts "
                       "trains its default 1600 steps, and so does this trainer (set max_train_epochs to train epochs)")
    elif not epochs and epoch:
        # the GUI computes ceil(images x repeats / batch / accumulation x epoch (x2 with regularisation images))
        options["max_train_epochs"] = epoch
        notices.append(f"{where} epoch = {epoch}: trains {epoch} epoch(s) (max_train_epochs = {epoch}), the step count the "
                       "kohya_ss GUI computes from the folders")
    percent, warmup_steps = gui["lr_warmup"], gui["lr_warmup_steps"]
    if warmup_steps > 0:
        options["lr_warmup_steps"] = int(warmup_steps)
    elif percent:
        # with a dataset_config and a step count the GUI converts the percentage itself; else sd-scripts gets the fraction
        total = steps if gui.get("dataset_config") and steps > 0 else None
        options["lr_warmup_steps"] = round(percent * total / 100) if total else percent / 100


def _learning_rates(gui: dict, options: dict) -> None:
    te_lr, unet_lr = gui["text_encoder_lr"], gui["unet_lr"]
    if te_lr > 0:
        options["text_encoder_lr"] = [te_lr, te_lr]  # the GUI's list: one value per text encoder
    if unet_lr:
        options["unet_lr"] = unet_lr
    options["network_train_unet_only"] = te_lr == 0 and unet_lr != 0
    options["network_train_text_encoder_only"] = te_lr != 0 and unet_lr == 0


def _noise(gui: dict, options: dict) -> None:
    if gui["noise_offset_type"] == "Multires":
        options["multires_noise_iterations"] = gui["multires_noise_iterations"]
        options["multires_noise_discount"] = gui["multires_noise_discount"]
    else:
        options["noise_offset"] = gui["noise_offset"]
        options["adaptive_noise_scale"] = gui["adaptive_noise_scale"]
        options["noise_offset_random_strength"] = gui.get("noise_offset_random_strength", False)


def _words(value) -> list[str]:
    """optimizer_args / lr_scheduler_args: one text, split as the GUI splits it."""
    return str(value or "").replace('"', "").split()


def gui_options(data: dict, where: str, notices: list) -> tuple[dict, str | None]:
    """(sd-scripts options of the GUI's TOML for `data`, sample prompt text or None). `where` names
    the file in messages; additional_parameters are not included (see additional_options)."""
    if not isinstance(data, dict):
        raise UserError(f"{where} expected a kohya_ss GUI JSON object of settings")
    for flag in ("flux1_checkbox", "sd3_checkbox", "hunyuan_image_checkbox", "anima_checkbox", "lumina_checkbox"):
        if data.get(flag):
            raise UserError(f"{where} {flag} = true: this GUI file trains another model; this trainer trains SDXL LoRAs")
    if data.get("sdxl") is False:
        raise UserError(f"{where} sdxl = false: the kohya_ss GUI would train SD 1.x/2.x with train_network.py; this trainer "
                        "trains SDXL (set sdxl = true for an SDXL model)")
    if data.get("train_inpainting"):
        raise UserError(f"{where} train_inpainting: inpainting training is not supported by this toolkit")
    gui = _normalised(data)
    options = {key: gui[key] for key in _SAME_NAME if key in gui}
    options["optimizer_type"] = gui["optimizer"]
    options["optimizer_args"] = _words(gui.get("optimizer_args"))
    options["lr_scheduler_args"] = _words(gui.get("lr_scheduler_args"))
    options["resolution"] = gui["max_resolution"]
    options["network_module"], options["network_args"] = network_settings(gui, where)
    for key in ("seed", "keep_tokens", "gradient_accumulation_steps", "caption_dropout_every_n_epochs", "clip_skip",
                "lr_scheduler_num_cycles", "max_token_length", "min_bucket_reso"):
        options[key] = gui[key]
    options["persistent_data_loader_workers"] = bool(gui.get("persistent_data_loader_workers"))
    options["no_half_vae"] = bool(gui.get("sdxl_no_half_vae"))
    options["cache_text_encoder_outputs"] = bool(gui.get("sdxl_cache_text_encoder_outputs"))
    options["xformers"] = gui["xformers"] == "xformers"
    options["sdpa"] = gui["xformers"] == "sdpa"
    options["wandb_run_name"] = gui.get("wandb_run_name") or gui.get("output_name")
    _steps(gui, options, notices, where)
    _learning_rates(gui, options)
    _noise(gui, options)
    if gui.get("max_grad_norm") in (0, "0"):
        notices.append(f"{where} max_grad_norm = 0: the kohya_ss GUI leaves zero values out, so sd-scripts clips gradients at "
                       "its default 1.0, and so does this trainer; add --max_grad_norm=0 to additional_parameters to turn "
                       "clipping off")
    options = {key: value for key, value in options.items() if not _unset(value)}
    options["max_data_loader_n_workers"] = gui["max_data_loader_n_workers"]  # the GUI always writes it
    prompts = gui.get("sample_prompts")
    _launcher_notice(gui, where, notices)
    _unused_notice(data, where, notices)
    return options, (prompts if isinstance(prompts, str) and prompts.strip() else None)


def _launcher_notice(gui: dict, where: str, notices: list) -> None:
    asked = [f"{key} = {gui[key]!r}" for key, inert in _LAUNCHER.items() if key in gui and gui[key] not in (inert, "", None)]
    if asked:
        notices.append(f"{where} {', '.join(asked)}: settings of accelerate launch, not of the training script; give them to "
                       "accelerate launch (e.g. accelerate launch --num_processes 2 sdxl_train_network.py --config_file ...)")


def _unused_notice(data: dict, where: str, notices: list) -> None:
    used = set(_SAME_NAME) | set(_CONSUMED) | set(_LAUNCHER) | KNOBS
    unused = [f"{key} = {value!r}" for key, value in data.items() if key not in used and not _unset(value)]
    if unused:
        notices.append(f"{where} not passed to sd-scripts by the kohya_ss GUI for an SDXL LoRA, so not used here either: "
                       + ", ".join(unused))


def additional_options(text: str, where: str) -> dict:
    """additional_parameters (`--max_grad_norm=0 --network_train_unet_only ...`) as {option: value},
    parsed as the command line parses them (the GUI removes double quotes and splits on spaces)."""
    from library.training.config.command_line import build_parser

    words = str(text or "").replace('"', "").split()
    if not words:
        return {}
    parser = build_parser()
    parser.exit_on_error = False
    try:
        parsed, unknown = parser.parse_known_args(words)
    except Exception as error:  # argparse.ArgumentError: a value missing after an option
        raise UserError(f"{where} additional_parameters: {error}") from None
    if unknown:
        raise UserError(f"{where} additional_parameters: {' '.join(unknown)} is not an option of sdxl_train_network.py "
                        "(kohya would stop on it too)")
    values = vars(parsed)
    values.pop("config_file", None)
    return values


def read_gui_json(path: Path, notices: list) -> dict:
    """A GUI file as a config table: its options at the top level and additional_parameters in an
    [additional_parameters] table that overrides them (the TOML loader treats tables as sections)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: invalid JSON (line {error.lineno}: {error.msg})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    where = f"{path}:"
    options, prompts = gui_options(data, where, notices)
    if prompts is not None:
        options["sample_prompts"] = str(write_sample_prompts(prompts, options.get("output_dir"), where, notices))
    extra = additional_options(data.get("additional_parameters", "") if isinstance(data, dict) else "", where)
    if extra:
        notices.append(f"{where} additional_parameters read as command-line options, as the kohya_ss GUI passes them: "
                       + " ".join(f"--{k}" + ("" if v == "true" else f" {' '.join(v) if isinstance(v, list) else v}")
                                  for k, v in extra.items()))
        for key in extra:  # replaced by the command line, not "set twice"
            options.pop(key, None)
        options["additional_parameters"] = extra
    return options


def write_sample_prompts(text: str, output_dir: str | None, where: str, notices: list) -> Path:
    """The GUI keeps sample prompts as text and writes them to <output_dir>/sample/prompt.txt before
    training; an existing prompt file named instead is used as it is."""
    if "\n" not in text and Path(text).suffix.lower() in (".txt", ".toml", ".json") and Path(text).is_file():
        return Path(text)
    if not output_dir:
        raise UserError(f"{where} sample_prompts holds prompt text, which the kohya_ss GUI writes to "
                        "<output_dir>/sample/prompt.txt; set output_dir")
    from library.file_io import write_text_atomic

    target = Path(output_dir) / "sample" / "prompt.txt"
    write_text_atomic(target, text)
    notices.append(f"{where} sample_prompts text written to {target} (as the kohya_ss GUI does)")
    return target
