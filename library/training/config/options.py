"""Every option of the training script, declared once: name, type, default, TOML section, help.

Both the command-line parser and the TOML validation are generated from this table, so an option
cannot exist in one and not the other. The names and sections are kohya sd-scripts' (its
sdxl_train_network.py knows about 200 options); `status` says what this toolkit does with each:

  SUPPORTED    implemented
  PENDING      part of the kohya surface, not implemented yet: setting it is a clear error
  UNSUPPORTED  deliberately not offered here (the reason is in the error)
  IGNORED      accepted with a notice (the reason): kohya ignores it for SDXL LoRA too, or it asks
               for machinery this toolkit replaces (DeepSpeed)
  INERT        accepted silently: the value changes nothing here (upload settings); kohya_compat.py
               says so when a value asks for an action

The status is what the code does: `refused_choices` lists values of an otherwise supported option
that are refused, and tests/test_option_status.py sets every SUPPORTED option (and every accepted
choice) and fails if validation refuses it. Making an option work is flipping its status here.
"""
from __future__ import annotations

from dataclasses import dataclass

from library.training.config.lr_scheduler_names import LR_SCHEDULERS, parse_lr_scheduler as SCHEDULER
from library.training.config.option_types import (
    parse_bool as B,
    parse_float as F,
    parse_float_or_float_list as F_OR_LIST,
    parse_float_pair as PAIR,
    parse_int as I,
    parse_int_or_float as I_OR_F,
    parse_resolution as RESO,
    parse_str as S,
    parse_str_list as LIST,
)

SUPPORTED, PENDING, UNSUPPORTED, IGNORED, INERT = "supported", "pending", "unsupported", "ignored", "inert"

SECTIONS = (
    "sdxl_arguments",
    "model_arguments",
    "dataset_arguments",
    "training_arguments",
    "logging_arguments",
    "sample_prompt_arguments",
    "saving_arguments",
    "optimizer_arguments",
    "additional_network_arguments",
    "pivotal_tuning_arguments",
)


@dataclass(frozen=True)
class Option:
    name: str
    parse: object
    default: object
    section: str
    help: str
    status: str = SUPPORTED
    choices: tuple | None = None
    reason: str = ""  # why an UNSUPPORTED/IGNORED/INERT option is not used
    refused_choices: dict | None = None  # value -> why it is refused (the option itself is supported)
    requires: str = ""  # what the machine needs for a supported option to work (an error names it otherwise)


_NO_NETWORK = "this toolkit never uses the network; upload or download files yourself"
_PICKLE = ("LoRA files are saved as safetensors only (pickles can run code when loaded, and every UI reads safetensors); "
           "remove the option")
_UPLOAD = "used only for uploading, which this toolkit does not do (a non-empty huggingface_repo_id gets a notice)"
_DEEPSPEED = ("LoRA training here uses accelerate's DDP (gradients averaged across processes); a LoRA's few parameters "
              "gain nothing from DeepSpeed ZeRO")

_TABLE = [
    # --- [sdxl_arguments] --------------------------------------------------------------------
    Option("cache_text_encoder_outputs", B, False, "sdxl_arguments", "encode captions once; the text encoders then leave memory unless samples or validation need them (UNet-only training)"),
    Option("cache_text_encoder_outputs_to_disk", B, False, "sdxl_arguments", "also write <stem>_te_outputs.npz next to each image"),
    Option("text_encoder_batch_size", I, None, "sdxl_arguments", "captions per text-encoder batch when caching their outputs (default 16; kohya's SDXL script ignores it)"),
    Option("no_half_vae", B, False, "sdxl_arguments", "keep the VAE in fp32 under mixed precision (the SDXL VAE overflows in fp16)"),
    Option("disable_mmap_load_safetensors", B, False, "sdxl_arguments", "read safetensors fully instead of memory-mapping (slow network filesystems)", IGNORED, reason="loading already reads tensors one by one"),
    # --- [model_arguments] -------------------------------------------------------------------
    Option("pretrained_model_name_or_path", S, None, "model_arguments", "SDXL .safetensors file or diffusers folder (local; never downloaded)"),
    Option("vae", S, None, "model_arguments", "separate VAE file or folder"),
    Option("tokenizer_cache_dir", S, None, "model_arguments", "folder with tokenizer/ and tokenizer_2/ (or kohya's cache folder names)"),
    Option("v2", B, False, "model_arguments", "Stable Diffusion 2.x model", UNSUPPORTED, reason="this trainer is for SDXL; v2 models are not SDXL"),
    Option("v_parameterization", B, False, "model_arguments", "train a v-prediction model"),
    # --- [dataset_arguments] -----------------------------------------------------------------
    Option("train_data_dir", S, None, "dataset_arguments", "image folder: DreamBooth style (<repeats>_<class>/ sub-folders) or with in_json"),
    Option("reg_data_dir", S, None, "dataset_arguments", "regularisation images, same folder naming as train_data_dir"),
    Option("in_json", S, None, "dataset_arguments", "fine-tune metadata JSON (meta_lat.json) describing train_data_dir"),
    Option("dataset_config", S, None, "dataset_arguments", "dataset TOML with [general], [[datasets]], [[datasets.subsets]]"),
    Option("dataset_repeats", I, 1, "dataset_arguments", "repeats of an in_json dataset per epoch"),
    Option("dataset_class", S, None, "dataset_arguments", "custom dataset class", UNSUPPORTED, reason="use a dataset TOML or metadata JSON instead"),
    Option("debug_dataset", B, False, "dataset_arguments", "print the batches the dataset produces (images, buckets, crops, captions) instead of training"),
    Option("resolution", RESO, None, "dataset_arguments", 'training resolution "width,height" (SDXL: "1024,1024")'),
    Option("enable_bucket", B, False, "dataset_arguments", "group images into aspect-ratio buckets"),
    Option("min_bucket_reso", I, 256, "dataset_arguments", "smallest bucket side"),
    Option("max_bucket_reso", I, 1024, "dataset_arguments", "largest bucket side (SDXL: 2048 fits portrait and landscape 1024-area buckets)"),
    Option("bucket_reso_steps", I, 64, "dataset_arguments", "bucket side step (a multiple of 32 for SDXL; 64 recommended)"),
    Option("bucket_no_upscale", B, False, "dataset_arguments", "never enlarge small images to fill a bucket"),
    Option("resize_interpolation", S, None, "dataset_arguments", "resampling filter for resizing", choices=("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")),
    Option("conditioning_data_dir", S, None, "dataset_arguments", "folder of loss masks for masked_loss: <image stem>.<png/jpg/...> per training image, white trains, black is ignored (the red channel, as kohya)"),
    Option("cache_info", B, False, "dataset_arguments", "remember captions and image sizes of DreamBooth folders in <folder>/metadata_cache.json for faster start-up"),
    Option("network_multiplier", F, 1.0, "dataset_arguments", "LoRA strength while training on this data (usually set per dataset in --dataset_config)"),
    Option("caption_extension", S, ".caption", "dataset_arguments", "caption file extension"),
    Option("caption_extention", S, None, "dataset_arguments", "misspelt alias of caption_extension, accepted as kohya does"),
    Option("shuffle_caption", B, False, "dataset_arguments", "shuffle comma-separated tags each step"),
    Option("caption_separator", S, ",", "dataset_arguments", "tag separator for shuffling and dropout"),
    Option("keep_tokens", I, 0, "dataset_arguments", "leading tags kept in place when shuffling"),
    Option("keep_tokens_separator", S, "", "dataset_arguments", "marker: tags before it are kept in place"),
    Option("secondary_separator", S, None, "dataset_arguments", "separator joining tags that shuffle as one"),
    Option("enable_wildcard", B, False, "dataset_arguments", "pick one of {a|b|c} alternatives in captions"),
    Option("caption_prefix", S, None, "dataset_arguments", "text put before every caption"),
    Option("caption_suffix", S, None, "dataset_arguments", "text put after every caption"),
    Option("caption_dropout_rate", F, 0.0, "dataset_arguments", "probability of training a step with an empty caption"),
    Option("caption_dropout_every_n_epochs", I, 0, "dataset_arguments", "drop all captions every N epochs"),
    Option("caption_tag_dropout_rate", F, 0.0, "dataset_arguments", "probability of dropping each tag"),
    Option("token_warmup_min", I, 1, "dataset_arguments", "tags used at the start of token warm-up"),
    Option("token_warmup_step", F, 0, "dataset_arguments", "steps (or fraction of steps) until all tags are used"),
    Option("weighted_captions", B, False, "dataset_arguments", "read A1111 emphasis in captions: (word:1.2), (word) x1.1, [word] /1.1"),
    Option("color_aug", B, False, "dataset_arguments", "random hue shift or gamma change on a third of the steps (disables latent caching)"),
    Option("flip_aug", B, False, "dataset_arguments", "random horizontal flips"),
    Option("face_crop_aug_range", PAIR, None, "dataset_arguments", "face-centred crops: the face spans 1/high..1/low of the image ('2.0,4.0'); face position from <name>_<cx>_<cy>_<w>_<h> file names; no bucketing"),
    Option("random_crop", B, False, "dataset_arguments", "random instead of centre crops (disables latent caching)"),
    Option("alpha_mask", B, False, "dataset_arguments", "use the image alpha channel as the loss mask"),
    Option("cache_latents", B, False, "dataset_arguments", "encode images once and keep latents in memory"),
    Option("cache_latents_to_disk", B, False, "dataset_arguments", "store latents as <image>_<W>x<H>_sdxl.npz and reuse them"),
    Option("vae_batch_size", I, 1, "dataset_arguments", "images per VAE batch when caching latents"),
    Option("skip_cache_check", B, False, "dataset_arguments", "trust existing latent caches without checking freshness"),
    Option("max_token_length", I, None, "dataset_arguments", "75 (default), 150 or 225 tokens per caption (another value above 75 uses the 75-token chunks kohya would, with a notice)"),
    # --- [training_arguments] ----------------------------------------------------------------
    Option("output_dir", S, None, "training_arguments", "folder for LoRA files, samples and states"),
    Option("output_name", S, "last", "training_arguments", "base name of saved files"),
    Option("save_precision", S, None, "training_arguments", "dtype of saved LoRA weights", choices=("float", "fp16", "bf16")),
    Option("save_every_n_epochs", I, None, "training_arguments", "save <name>-000001.safetensors every N epochs"),
    Option("save_every_n_steps", I, None, "training_arguments", "save <name>-step00000500.safetensors every N steps"),
    Option("save_n_epoch_ratio", I, None, "training_arguments", "save about N times over the whole run"),
    Option("save_last_n_epochs", I, None, "training_arguments", "keep only the last N epoch saves"),
    Option("save_last_n_epochs_state", I, None, "training_arguments", "keep only the last N epoch states"),
    Option("save_last_n_steps", I, None, "training_arguments", "keep only saves from the last N steps"),
    Option("save_last_n_steps_state", I, None, "training_arguments", "keep only states from the last N steps"),
    Option("save_state", B, False, "training_arguments", "save a resumable state with every model save"),
    Option("save_state_on_train_end", B, False, "training_arguments", "save a resumable state at the end"),
    Option("resume", S, None, "training_arguments", "state folder to resume from (or the output folder: newest state in it)"),
    Option("train_batch_size", I, 1, "training_arguments", "images per step"),
    Option("max_train_steps", I, 1600, "training_arguments", "total optimizer steps (max_train_epochs wins when set)"),
    Option("max_train_epochs", I, None, "training_arguments", "total epochs"),
    Option("max_data_loader_n_workers", I, 8, "training_arguments", "processes that decode, crop and augment images without cached latents (at most the CPU count; 0: the main process)"),
    Option("persistent_data_loader_workers", B, False, "training_arguments", "keep the loader workers alive between epochs"),
    Option("seed", I, None, "training_arguments", "random seed (runs are reproducible on CPU)"),
    Option("gradient_checkpointing", B, False, "training_arguments", "recompute activations to save memory"),
    Option("gradient_checkpointing_policy", S, "auto", "training_arguments", "what gradient checkpointing recomputes: selective keeps the matmul and attention outputs of the deepest transformer blocks (most of the compute, same numbers, faster steps at SDXL size (docs/performance.md), more activation memory) and recomputes the rest; full recomputes everything, as kohya (least memory); auto: selective when the memory check finds room for it, else full", choices=("auto", "selective", "full")),
    Option("gradient_accumulation_steps", I, 1, "training_arguments", "batches per optimizer step"),
    Option("mixed_precision", S, "no", "training_arguments", "no, fp16 or bf16: base weights in that dtype, every forward under autocast (on a CPU too: fast only with AVX-512 BF16/FP16 or AMX)", choices=("no", "fp16", "bf16")),
    Option("full_fp16", B, False, "training_arguments", "keep LoRA weights and gradients in fp16 (loss scaling; the optimizer steps fp32 master copies)"),
    Option("full_bf16", B, False, "training_arguments", "keep LoRA weights and gradients in bf16"),
    Option("fp8_base", B, False, "training_arguments", "store the frozen UNet and text encoders' Linear/Conv2d weights in float8 (per-channel scaled), upcast per layer to the mixed_precision dtype; any device"),
    Option("fp8_base_unet", B, False, "training_arguments", "as fp8_base, for the UNet only (text encoders in the mixed_precision dtype)"),
    Option("lowram", B, False, "training_arguments", "load models straight to the GPU to save system RAM", IGNORED, reason='models are loaded tensor by tensor and moved once; there is nothing to tune'),
    Option("highvram", B, False, "training_arguments", "skip memory-saving cache clears", IGNORED, reason='models are loaded tensor by tensor and moved once; there is nothing to tune'),
    Option("mem_eff_attn", B, False, "training_arguments", "memory-efficient attention (mapped to PyTorch SDPA)"),
    Option("xformers", B, False, "training_arguments", "xformers attention", requires="a CUDA GPU and the xformers package"),
    Option("sdpa", B, False, "training_arguments", "PyTorch scaled-dot-product attention (the default)"),
    Option("torch_compile", B, False, "training_arguments", "torch.compile the UNet (with the network in it); the first step compiles"),
    Option("dynamo_backend", S, "inductor", "training_arguments", "torch.compile backend for torch_compile (read only with torch_compile, as in kohya)", choices=(
        "no", "NO", "eager", "aot_eager", "inductor", "aot_ts_nvfuser", "nvprims_nvfuser", "cudagraphs", "ofi", "fx2trt", "onnxrt",
        "tensort", "ipex", "tvm")),
    Option("clip_skip", I, None, "training_arguments", "text-encoder layer skip", IGNORED, reason="SDXL always uses the penultimate layer; kohya ignores clip_skip for SDXL too"),
    Option("noise_offset", F, None, "training_arguments", "noise offset (0.0357 is common)"),
    Option("noise_offset_random_strength", B, False, "training_arguments", "scale the noise offset randomly per sample"),
    Option("adaptive_noise_scale", F, None, "training_arguments", "noise offset proportional to each latent's mean"),
    Option("multires_noise_iterations", I, None, "training_arguments", "pyramid noise iterations (6-10)"),
    Option("multires_noise_discount", F, 0.3, "training_arguments", "pyramid noise discount"),
    Option("ip_noise_gamma", F, None, "training_arguments", "input perturbation noise (0.1 recommended)"),
    Option("ip_noise_gamma_random_strength", B, False, "training_arguments", "scale ip_noise_gamma randomly"),
    Option("zero_terminal_snr", B, False, "training_arguments", "rescale the noise schedule to zero terminal SNR"),
    Option("min_timestep", I, None, "training_arguments", "lowest timestep sampled (0)"),
    Option("max_timestep", I, None, "training_arguments", "highest timestep sampled, exclusive (1000)"),
    Option("loss_type", S, "l2", "training_arguments", "loss function", choices=("l1", "l2", "huber", "smooth_l1")),
    Option("huber_schedule", S, "snr", "training_arguments", "how huber_c varies with the timestep", choices=("constant", "exponential", "snr")),
    Option("huber_c", F, 0.1, "training_arguments", "huber loss threshold"),
    Option("huber_scale", F, 1.0, "training_arguments", "huber loss scale"),
    Option("min_snr_gamma", F, None, "training_arguments", "min-SNR loss weighting gamma (5 recommended)"),
    Option("scale_v_pred_loss_like_noise_pred", B, False, "training_arguments", "scale v-prediction loss like noise prediction"),
    Option("v_pred_like_loss", F, None, "training_arguments", "add a v-prediction-like loss term"),
    Option("debiased_estimation_loss", B, False, "training_arguments", "debiased estimation loss weighting"),
    Option("masked_loss", B, False, "training_arguments", "weight the loss by a mask (alpha_mask or conditioning images)"),
    Option("prior_loss_weight", F, 1.0, "training_arguments", "loss weight of regularisation images"),
    Option("initial_epoch", I, None, "training_arguments", "epoch number to start counting from"),
    Option("initial_step", I, None, "training_arguments", "step number to start counting from"),
    Option("skip_until_initial_step", B, False, "training_arguments", "skip batches until initial_step (same data order as an uninterrupted run)"),
    Option("validation_seed", I, None, "training_arguments", "seed of the validation split and of its fixed noise, flips and caption choices (default: seed)"),
    Option("validation_split", F, 0.0, "training_arguments", "fraction of images held out for validation loss"),
    Option("validate_every_n_steps", I, None, "training_arguments", "validation loss every N steps"),
    Option("validate_every_n_epochs", I, None, "training_arguments", "validation loss every N epochs (default: every epoch, as kohya)"),
    Option("max_validation_steps", I, None, "training_arguments", "at most this many validation batches, each scored at 4 timesteps (kohya counts batches)"),
    Option("cpu_offload_checkpointing", B, False, "training_arguments", "with gradient checkpointing, hold the checkpointed block inputs in host memory (GPU; a no-op on the CPU)"),
    Option("ddp_timeout", I, None, "training_arguments", "multi-process timeout of the process group, in minutes"),
    Option("ddp_gradient_as_bucket_view", B, False, "training_arguments", "DDP gradient_as_bucket_view (gradients live in the all-reduce buckets: less memory)"),
    Option("ddp_static_graph", B, False, "training_arguments", "DDP static_graph (the same LoRA modules train every step; not with module_dropout)"),
    Option("ddp_check_sync", B, False, "training_arguments", "after every optimizer step, check that all processes hold bit-identical network weights (one small gather per step; for diagnosing multi-GPU setups)"),
    Option("deepspeed", B, False, "training_arguments", "DeepSpeed", IGNORED, reason=_DEEPSPEED),
    Option("zero_stage", I, 2, "training_arguments", "DeepSpeed ZeRO stage", IGNORED, choices=(0, 1, 2, 3), reason=_DEEPSPEED),
    Option("offload_optimizer_device", S, None, "training_arguments", "DeepSpeed optimizer offload device", IGNORED, choices=("cpu", "nvme"), reason=_DEEPSPEED),
    Option("offload_optimizer_nvme_path", S, None, "training_arguments", "DeepSpeed optimizer offload path", IGNORED, reason=_DEEPSPEED),
    Option("offload_param_device", S, None, "training_arguments", "DeepSpeed parameter offload device", IGNORED, choices=("cpu", "nvme"), reason=_DEEPSPEED),
    Option("offload_param_nvme_path", S, None, "training_arguments", "DeepSpeed parameter offload path", IGNORED, reason=_DEEPSPEED),
    Option("zero3_init_flag", B, False, "training_arguments", "DeepSpeed ZeRO-3 deepspeed.zero.Init", IGNORED, reason=_DEEPSPEED),
    Option("zero3_save_16bit_model", B, False, "training_arguments", "DeepSpeed ZeRO-3 16-bit save", IGNORED, reason=_DEEPSPEED),
    Option("fp16_master_weights_and_gradients", B, False, "training_arguments", "DeepSpeed fp16 master weights", IGNORED, reason=_DEEPSPEED),
    Option("strict_config", B, False, "training_arguments", "make every config key this toolkit does not know an error (default: ignored with one notice, as kohya ignores them silently; a likely typo stops the run either way)"),
    Option("output_config", B, False, "training_arguments", "write the resolved config next to the outputs and exit"),
    Option("print_config", B, False, "training_arguments", "validate, summarise the dataset and steps, and exit without training"),
    Option("estimate_memory", B, False, "training_arguments", "print the expected peak accelerator memory (from shapes only, no weights loaded) and exit"),
    Option("skip_memory_check", B, False, "training_arguments", "do not compare the --estimate_memory figure with the device's free memory before the models load (the run otherwise stops when it cannot fit, naming settings that would)"),
    Option("huggingface_repo_id", S, None, "training_arguments", "upload target", INERT, reason=_UPLOAD),
    Option("huggingface_repo_type", S, None, "training_arguments", "upload target", INERT, reason=_UPLOAD),
    Option("huggingface_path_in_repo", S, None, "training_arguments", "upload target", INERT, reason=_UPLOAD),
    Option("huggingface_token", S, None, "training_arguments", "upload token", INERT, reason=_UPLOAD),
    Option("huggingface_repo_visibility", S, None, "training_arguments", "upload target", INERT, reason=_UPLOAD),
    Option("save_state_to_huggingface", B, False, "training_arguments", "upload states", INERT, reason=_UPLOAD),
    Option("resume_from_huggingface", B, False, "training_arguments", "download the resume state", INERT, reason=f"{_NO_NETWORK} (with resume set it is an error: give the local state folder)"),
    Option("async_upload", B, False, "training_arguments", "upload in the background", INERT, reason=_UPLOAD),
    # --- [logging_arguments] -----------------------------------------------------------------
    Option("logging_dir", S, None, "logging_arguments", "TensorBoard log folder"),
    Option("log_with", S, None, "logging_arguments", "tensorboard, wandb or all", choices=("tensorboard", "wandb", "all"), requires="the wandb package for wandb and all"),
    Option("log_prefix", S, None, "logging_arguments", "prefix of the run folder name"),
    Option("log_tracker_name", S, None, "logging_arguments", "tracker (project) name"),
    Option("log_tracker_config", S, None, "logging_arguments", "TOML with tracker init arguments"),
    Option("log_config", B, False, "logging_arguments", "log the training config to the tracker"),
    Option("wandb_run_name", S, None, "logging_arguments", "wandb run name"),
    Option("wandb_api_key", S, None, "logging_arguments", "wandb API key"),
    Option("console_log_level", S, None, "logging_arguments", "console log level", IGNORED, choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), reason='progress and notices go to the console; redirect them with the shell'),
    Option("console_log_file", S, None, "logging_arguments", "also write the console log to this file", IGNORED, reason='progress and notices go to the console; redirect them with the shell'),
    Option("console_log_simple", B, False, "logging_arguments", "plain console log without colours", IGNORED, reason='progress and notices go to the console; redirect them with the shell'),
    # --- [sample_prompt_arguments] -----------------------------------------------------------
    Option("sample_prompts", S, None, "sample_prompt_arguments", "prompt file (.txt, .toml or .json) for sample images"),
    Option("sample_every_n_steps", I, None, "sample_prompt_arguments", "sample every N steps"),
    Option("sample_every_n_epochs", I, None, "sample_prompt_arguments", "sample every N epochs"),
    Option("sample_at_first", B, False, "sample_prompt_arguments", "sample before training starts"),
    Option("sample_sampler", S, "ddim", "sample_prompt_arguments", "sampler for sample images", choices=(
        "ddim", "pndm", "lms", "euler", "euler_a", "heun", "dpm_2", "dpm_2_a", "dpmsolver", "dpmsolver++", "dpmsingle",
        "k_lms", "k_euler", "k_euler_a", "k_dpm_2", "k_dpm_2_a")),
    # --- [saving_arguments] ------------------------------------------------------------------
    Option("save_model_as", S, "safetensors", "saving_arguments", "LoRA file format", choices=("safetensors",), refused_choices={
        "ckpt": _PICKLE, "pt": _PICKLE}),
    Option("use_safetensors", B, False, "saving_arguments", "save as safetensors (the default here)"),
    Option("no_metadata", B, False, "saving_arguments", "save only the minimal metadata set"),
    Option("training_comment", S, None, "saving_arguments", "free text stored as ss_training_comment"),
    Option("metadata_title", S, None, "saving_arguments", "modelspec.title"),
    Option("metadata_author", S, None, "saving_arguments", "modelspec.author"),
    Option("metadata_description", S, None, "saving_arguments", "modelspec.description"),
    Option("metadata_license", S, None, "saving_arguments", "modelspec.license"),
    Option("metadata_tags", S, None, "saving_arguments", "modelspec.tags (comma separated)"),
    Option("metadata_trigger_phrase", S, None, "saving_arguments", "modelspec.trigger_phrase"),
    Option("metadata_usage_hint", S, None, "saving_arguments", "modelspec.usage_hint"),
    Option("metadata_merged_from", S, None, "saving_arguments", "modelspec.merged_from"),
    Option("metadata_preprocessor", S, None, "saving_arguments", "modelspec.preprocessor"),
    Option("metadata_is_negative_embedding", S, None, "saving_arguments", "modelspec.is_negative_embedding"),
    Option("metadata_thumbnail", S, None, "saving_arguments", "image stored as modelspec.thumbnail (a JPEG data URI, at most 256 px)"),
    # --- [optimizer_arguments] ---------------------------------------------------------------
    Option("optimizer_type", S, "", "optimizer_arguments", "AdamW, AdamW8bit, PagedAdamW8bit, Lion, Lion8bit, SGDNesterov, SGDNesterov8bit, Prodigy, AdaFactor, DAdapt*, *ScheduleFree, or a dotted class path"),
    Option("optimizer_args", LIST, None, "optimizer_arguments", 'optimizer keyword arguments as "key=value" strings'),
    Option("use_8bit_adam", B, False, "optimizer_arguments", "old spelling of optimizer_type = AdamW8bit"),
    Option("use_lion_optimizer", B, False, "optimizer_arguments", "old spelling of optimizer_type = Lion"),
    Option("learning_rate", F, 2e-6, "optimizer_arguments", "learning rate (the default for groups without their own)"),
    Option("max_grad_norm", F, 1.0, "optimizer_arguments", "gradient clipping norm (0 disables)"),
    Option("lr_scheduler", SCHEDULER, "constant", "optimizer_arguments", "learning-rate schedule: " + ", ".join(LR_SCHEDULERS) + ' ("adafactor:<lr>" as kohya)'),
    Option("lr_scheduler_type", S, "", "optimizer_arguments", "scheduler class: a torch.optim.lr_scheduler name or a dotted path, given lr_scheduler_args"),
    Option("lr_scheduler_args", LIST, None, "optimizer_arguments", 'scheduler keyword arguments as "key=value" strings'),
    Option("lr_warmup_steps", I_OR_F, 0, "optimizer_arguments", "warm-up steps, or a fraction of all steps"),
    Option("lr_decay_steps", I_OR_F, 0, "optimizer_arguments", "decay steps (warmup_stable_decay), or a fraction"),
    Option("lr_scheduler_num_cycles", I, 1, "optimizer_arguments", "restarts of cosine_with_restarts"),
    Option("lr_scheduler_power", F, 1.0, "optimizer_arguments", "power of the polynomial schedule"),
    Option("lr_scheduler_timescale", I, None, "optimizer_arguments", "timescale of inverse_sqrt (default: warm-up steps)"),
    Option("lr_scheduler_min_lr_ratio", F, None, "optimizer_arguments", "final lr / initial lr of cosine_with_min_lr and warmup_stable_decay"),
    Option("fused_backward_pass", B, False, "optimizer_arguments", "fuse the optimizer step into backward", IGNORED,
           reason="an option of full fine-tuning (sdxl_train.py); kohya's LoRA training accepts it (with Adafactor) and trains as without it"),
    Option("optimizer_schedulefree_wrapper", B, False, "optimizer_arguments", "wrap any optimizer in schedulefree.ScheduleFreeWrapper (evaluated, sampled and saved at the averaged weights)"),
    Option("schedulefree_wrapper_args", LIST, None, "optimizer_arguments", 'ScheduleFreeWrapper "key=value" arguments (momentum, weight_decay_at_y, r, weight_lr_power)'),
    # --- [additional_network_arguments] ------------------------------------------------------
    Option("network_module", S, None, "additional_network_arguments", 'network to train: "networks.lora", "networks.dylora" or "lycoris.kohya"'),
    Option("network_dim", I, None, "additional_network_arguments", "LoRA rank"),
    Option("network_alpha", F, 1.0, "additional_network_arguments", "LoRA alpha (scale = alpha / rank)"),
    Option("network_dropout", F, None, "additional_network_arguments", "dropout on the LoRA down output"),
    Option("network_args", LIST, None, "additional_network_arguments", 'network options as "key=value" strings (conv_dim, algo, preset, block_dims, ...)'),
    Option("network_weights", S, None, "additional_network_arguments", "LoRA file to start from"),
    Option("dim_from_weights", B, False, "additional_network_arguments", "take rank and alpha from network_weights"),
    Option("network_train_unet_only", B, False, "additional_network_arguments", "train only the UNet LoRA"),
    Option("network_train_text_encoder_only", B, False, "additional_network_arguments", "train only the text-encoder LoRA"),
    Option("unet_lr", F, None, "additional_network_arguments", "UNet learning rate (default: learning_rate)"),
    Option("text_encoder_lr", F_OR_LIST, None, "additional_network_arguments", "text-encoder learning rate, or one per encoder"),
    Option("scale_weight_norms", F, None, "additional_network_arguments", "max-norm regularisation of each LoRA module (1.0 is common)"),
    Option("base_weights", LIST, None, "additional_network_arguments", "LoRA files merged into the base model before training"),
    Option("base_weights_multiplier", LIST, None, "additional_network_arguments", "strength of each base_weights file"),
    Option("loraplus_lr_ratio", F, None, "additional_network_arguments", "LoRA+: lr multiplier of the up matrices"),
    Option("loraplus_unet_lr_ratio", F, None, "additional_network_arguments", "LoRA+ ratio for the UNet only"),
    Option("loraplus_text_encoder_lr_ratio", F, None, "additional_network_arguments", "LoRA+ ratio for the text encoders only"),
    # --- [pivotal_tuning_arguments] (this toolkit's own; no kohya equivalent) --------------------
    Option("train_text_encoder_ti", B, False, "pivotal_tuning_arguments", "learn new trigger tokens <s0><s1>... in both text encoders by textual inversion (pivotal tuning); needs network_train_unet_only"),
    Option("train_text_encoder_ti_frac", F, 0.5, "pivotal_tuning_arguments", "fraction of the optimizer steps during which the new tokens train (pivot at floor(frac x steps))"),
    Option("token_abstraction", S, "TOK", "pivotal_tuning_arguments", "word(s) in captions and prompts replaced by the new tokens, whole words only (comma list)"),
    Option("num_new_tokens_per_abstraction", I, 2, "pivotal_tuning_arguments", "new tokens per abstraction word"),
    Option("initializer_token", S, None, "pivotal_tuning_arguments", "word whose embedding initialises the new tokens (default: random with the vocabulary's std)"),
    Option("adam_weight_decay_text_encoder", F, None, "pivotal_tuning_arguments", "weight decay of the new-token embeddings (default: the optimizer's)"),
    # --- named optimizer settings (diffusers' names): conveniences over optimizer_args -----------
    Option("prodigy_beta3", F, None, "optimizer_arguments", "Prodigy beta3 (optimizer_args \"beta3=...\"; default sqrt(beta2))"),
    Option("prodigy_decouple", B, None, "optimizer_arguments", "Prodigy decoupled (AdamW-style) weight decay (optimizer_args \"decouple=...\")"),
    Option("prodigy_use_bias_correction", B, None, "optimizer_arguments", "Prodigy Adam bias correction (optimizer_args \"use_bias_correction=...\")"),
    Option("prodigy_safeguard_warmup", B, None, "optimizer_arguments", "Prodigy: keep the d estimate stable during lr warm-up (optimizer_args \"safeguard_warmup=...\")"),
    Option("adam_beta1", F, None, "optimizer_arguments", "first beta of Adam-family optimizers and Prodigy (optimizer_args \"betas=(b1,b2)\")"),
    Option("adam_beta2", F, None, "optimizer_arguments", "second beta of Adam-family optimizers and Prodigy (optimizer_args \"betas=(b1,b2)\")"),
    Option("adam_weight_decay", F, None, "optimizer_arguments", "weight decay of the optimizer (optimizer_args \"weight_decay=...\")"),
]

OPTIONS: dict[str, Option] = {option.name: option for option in _TABLE}
assert len(OPTIONS) == len(_TABLE), "an option is declared twice"

# Keys of the dataset TOML that are not training options: written in the training config they are
# a mistake worth naming precisely.
DATASET_ONLY_KEYS = {
    "image_dir": "[[datasets.subsets]]",
    "class_tokens": "[[datasets.subsets]]",
    "is_reg": "[[datasets.subsets]]",
    "metadata_file": "[[datasets.subsets]]",
    "custom_attributes": "[[datasets.subsets]]",
}

# Network options that kohya-era configs (and the seed tutorial) write as top-level keys; kohya
# silently ignores them there, we forward them into network_args with a notice.
NETWORK_ARG_KEYS = (
    "algo", "preset", "conv_dim", "conv_alpha", "dropout", "rank_dropout", "module_dropout", "use_tucker",
    "use_scalar", "factor", "decompose_both", "dora_wd", "train_norm", "block_dims", "block_alphas",
    "conv_block_dims", "conv_block_alphas", "down_lr_weight", "mid_lr_weight", "up_lr_weight",
    "block_lr_zero_threshold", "unit", "rank_dropout_scale", "bypass_mode",
)
