"""Keys that published kohya configs carry although kohya's sdxl_train_network.py has no option for
them. kohya merges every TOML table into one namespace and never reads these, so they change
nothing; we ignore them too (with one notice, or an error under strict_config) and say what they
were meant for where that is known. Neither list is ever treated as a likely typo.
"""
from __future__ import annotations

# Keys written by GUIs, other trainers and service templates, with what they mean and which
# option does it here. "{value}" is replaced by the key's value in the notice.
EXPLAINED = {
    "epoch": "kohya_ss GUI's epoch count, which the GUI passes to kohya as max_train_epochs; set max_train_epochs = {value} for that",
    "epochs": "not a kohya option; set max_train_epochs = {value} for that",
    "noise_offset_type": "kohya_ss GUI's choice between noise_offset (\"Original\") and multires_noise_iterations (\"Multires\"); those options do it",
    "weight_decay": "kohya reads weight decay only from optimizer_args; write optimizer_args = [\"weight_decay={value}\"] (or adam_weight_decay = {value})",
    "trigger_word": "not a kohya option; metadata_trigger_phrase stores a trigger phrase in the LoRA",
    "character": "metadata of another tool",
    "rights": "metadata of another tool",
    "recommended_dataset_size": "metadata of another tool",
    "sdxl": "GUI switch between SD 1.x and SDXL scripts; this trainer always trains SDXL",
    "sdxl_cache_text_encoder_outputs": "kohya_ss GUI name of cache_text_encoder_outputs",
    "sdxl_no_half_vae": "kohya_ss GUI name of no_half_vae",
    "num_cpu_threads_per_process": "an option of accelerate launch, not of the training script",
    "num_processes": "an option of accelerate launch, not of the training script",
    "gpu_ids": "an option of accelerate launch, not of the training script",
    "multi_gpu": "an option of accelerate launch, not of the training script",
    "persistent_workers": "another trainer's name of persistent_data_loader_workers",
    "pin_memory": "a data loader setting of other trainers",
    "tokenizer_path": "another trainer's name; tokenizer_cache_dir points at local tokenizers here",
    "lr_restart_cycles": "SD-Trainer's name of lr_scheduler_num_cycles",
    "lr_warmup": "kohya_ss GUI's warm-up percentage; lr_warmup_steps takes steps or a fraction such as 0.1 (a GUI .json given as --config_file is read with it)",
    "max_resolution": "kohya_ss GUI's name of resolution",
    "use_ema": "EMA weights are not an option of kohya's sdxl_train_network",
    "ema_rate": "EMA weights are not an option of kohya's sdxl_train_network",
    "model_train_type": "SD-Trainer's script selector",
    "num_repeats": "a dataset config key; at the top level kohya uses dataset_repeats (or the <repeats>_ folder prefix) instead",
    "batch_size": "a dataset config key; at the top level kohya uses train_batch_size instead",
    "datasets": "[[datasets]] tables belong in the --dataset_config file",
    "subsets": "[[subsets]] tables belong in the --dataset_config file, under [[datasets]]",
    "LoRA_type": "kohya_ss GUI setting (network_module and network_args do it; a GUI .json given as --config_file is read with it)",
    "LyCORIS_preset": "kohya_ss GUI setting; network_args = [\"preset=...\"] does it",
    "additional_parameters": "kohya_ss GUI's extra command-line text; write those options as keys (a GUI .json given as --config_file is read with it)",
    "sample_dir": "samples are written to <output_dir>/sample here, as in kohya",
}

# Option names of kohya's other training scripts (FLUX, SD3, Lumina, Anima, DreamBooth, textual
# inversion, ControlNet, full fine-tuning) that sdxl_train_network.py does not define. Collected from
# the add_argument calls of kohya-ss/sd-scripts main (2025).
KOHYA_OTHER_SCRIPTS = frozenset("""
ae apply_lg_attn_mask apply_t5_attn_mask attn_mode block_lr blocks_to_swap blockwise_fused_optimizers byt5
clip_g clip_g_dropout_rate clip_l clip_l_dropout_rate cond_emb_dim control_net_lr controlnet_model_name_or_path
cross_attn_lr diffusers_xformers discrete_flow_shift double_blocks_to_swap enable_scaled_pos_embed fp8_scaled
fp8_vl fused_optimizer_groups gemma2 gemma2_max_token_length guidance_scale init_word learning_rate_te
learning_rate_te1 learning_rate_te2 learning_rate_te3 llm_adapter_lr llm_adapter_path logit_mean logit_std
mem_eff_save mlp_lr mod_lr mode_scale model_prediction_type model_type no_token_padding num_last_block_to_freeze
num_vectors_per_token pos_emb_random_crop_rate qwen3 qwen3_max_token_length sample_batch_size save_clip
save_t5xxl self_attn_lr sigmoid_scale single_blocks_to_swap skip_latents_validity_check split_attn split_mode
stop_text_encoder_training system_prompt t5_dropout_rate t5_max_token_length t5_tokenizer_path t5xxl
t5xxl_device t5xxl_dtype t5xxl_max_token_length text_encoder text_encoder_cpu
timestep_sampling token_string train_t5xxl train_text_encoder training_shift unsloth_offload_checkpointing
use_flash_attn use_object_template use_sage_attn use_style_template use_t5xxl_cache_only vae_chunk_size
vae_disable_cache weighting_scheme weights
""".split())

OTHER_SCRIPT_NOTE = "an option of another kohya training script (FLUX, SD3, DreamBooth, textual inversion ...)"


def explanation(key: str, value) -> str | None:
    """What an ignored key is, or None when nothing is known about it."""
    if key in EXPLAINED:
        return EXPLAINED[key].replace("{value}", str(value))
    if key in KOHYA_OTHER_SCRIPTS:
        return OTHER_SCRIPT_NOTE
    return None


def is_known_foreign(key: str) -> bool:
    return key in EXPLAINED or key in KOHYA_OTHER_SCRIPTS
