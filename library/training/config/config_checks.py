"""Checks of option combinations, run after the config is resolved and before any model loads."""
from __future__ import annotations

from pathlib import Path

from library.errors import UserError
from library.lora.network_modules import REFUSED as REFUSED_NETWORK_MODULES
from library.training.optim.optimizer_options import check_optimizer_options
from library.training.config.pivotal_options import check_pivotal_options

_CAPTION_CHANGERS = ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate", "caption_dropout_every_n_epochs",
                     "token_warmup_step", "enable_wildcard")


def caption_changers(args, subsets=()) -> tuple[str, ...]:
    """The options (of the config or any subset) that change a caption from step to step, which
    cached text-encoder outputs cannot follow; shared with tools/cache_text_encoder_outputs.py."""
    return tuple(name for name in _CAPTION_CHANGERS if getattr(args, name) or any(getattr(s, name) for s in subsets))


def check_combinations(args, sources: dict, notices: list, subsets=()) -> None:
    def where(name):
        return sources.get(name, "command line")

    if not args.pretrained_model_name_or_path:
        raise UserError("pretrained_model_name_or_path is not set; give the local SDXL .safetensors file or diffusers folder")
    if not args.output_dir and not args.print_config:
        raise UserError("output_dir is not set; add output_dir = \"...\" under [training_arguments]")
    check_values(args, where)
    if args.network_train_unet_only and args.network_train_text_encoder_only:
        raise UserError("network_train_unet_only and network_train_text_encoder_only together train nothing; keep one")
    check_pivotal_options(args, sources, notices)
    check_optimizer_options(args, sources, notices)
    if args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk:
        if not args.network_train_unet_only:
            raise UserError(
                f"{where('cache_text_encoder_outputs')}: cache_text_encoder_outputs needs network_train_unet_only = true "
                "(cached outputs cannot train the text-encoder LoRA)"
            )
        for name in caption_changers(args, subsets)[:1]:
            raise UserError(
                f"{where(name)}: {name} changes captions every step, which cache_text_encoder_outputs cannot follow; "
                "disable one of them"
            )
        if args.train_text_encoder_ti:
            raise UserError("pivotal tuning (train_text_encoder_ti) cannot use cache_text_encoder_outputs: the new tokens change the outputs")
    if (args.face_crop_aug_range or any(s.face_crop_aug_range for s in subsets)) and args.enable_bucket:
        raise UserError(f"{where('face_crop_aug_range')}: face_crop_aug_range crops to the training resolution and cannot be "
                        "combined with enable_bucket (as in kohya); disable one")
    if args.max_token_length not in (None, 75, 150, 225):
        raise UserError(f"{where('max_token_length')}: max_token_length must be 75, 150 or 225")
    if args.network_module in REFUSED_NETWORK_MODULES:  # before any model loads
        raise UserError(f"{where('network_module')}: network_module = \"{args.network_module}\": "
                        f"{REFUSED_NETWORK_MODULES[args.network_module]}")
    if args.min_timestep is not None and not 0 <= args.min_timestep < 1000:  # also keeps min == max a timestep that exists
        raise UserError(f"{where('min_timestep')}: min_timestep must be in 0..999")
    if args.min_timestep is not None and args.max_timestep is not None and args.min_timestep > args.max_timestep:
        raise UserError(f"{where('min_timestep')}: min_timestep {args.min_timestep} must not be above max_timestep {args.max_timestep}")
    if args.max_timestep is not None and not 0 < args.max_timestep <= 1000:
        raise UserError(f"{where('max_timestep')}: max_timestep must be in 1..1000")
    if args.gradient_accumulation_steps < 1 or args.train_batch_size < 1:
        raise UserError("train_batch_size and gradient_accumulation_steps must be at least 1")
    if args.lr_warmup_steps and args.lr_scheduler == "constant":
        notices.append("lr_warmup_steps has no effect with lr_scheduler = \"constant\"; use \"constant_with_warmup\"")
    if args.adaptive_noise_scale is not None and args.noise_offset is None:  # as kohya: it scales the offset
        raise UserError(f"{where('adaptive_noise_scale')}: adaptive_noise_scale adds to noise_offset; set noise_offset too (e.g. 0.0357)")
    if args.scale_v_pred_loss_like_noise_pred and not args.v_parameterization:  # kohya refuses it too
        raise UserError(f"{where('scale_v_pred_loss_like_noise_pred')}: scale_v_pred_loss_like_noise_pred only applies to "
                        "v-prediction models; add v_parameterization = true or remove it")
    if args.v_pred_like_loss and args.v_parameterization:
        raise UserError("v_pred_like_loss is for epsilon models; remove it with v_parameterization")
    if args.masked_loss and not (args.alpha_mask or any(s.alpha_mask or s.conditioning_data_dir for s in subsets)):
        raise UserError(f"{where('masked_loss')}: masked_loss needs masks: alpha_mask = true (the images' alpha channel) or "
                        "conditioning_data_dir (a folder of mask images)")
    for subset in subsets:
        if subset.alpha_mask and subset.conditioning_data_dir and args.masked_loss:
            raise UserError(f"{subset.image_dir}: alpha_mask and conditioning_data_dir both give loss masks; keep one")
    if args.log_with in ("wandb", "all"):
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise UserError(f"{where('log_with')}: log_with = \"{args.log_with}\" needs the wandb package: pip install wandb (or use tensorboard)")
    for name in ("vae", "network_weights", "in_json", "sample_prompts", "dataset_config"):
        value = getattr(args, name)
        if value and not Path(value).exists():
            raise UserError(f"{where(name)}: {name} {value!r}: file or folder not found")


def check_values(args, where) -> None:
    """Values that would otherwise fail deep inside torch or the network with a traceback."""
    for name in ("learning_rate", "unet_lr", "text_encoder_lr"):
        value = getattr(args, name)
        for number in value if isinstance(value, (list, tuple)) else [value]:
            if number is not None and (number < 0 or number != number):
                raise UserError(f"{where(name)}: {name} = {number}: a learning rate cannot be negative; "
                                "use e.g. 1e-4 (0 turns that part's training off)")
    if args.network_dim is not None and args.network_dim < 1:
        raise UserError(f"{where('network_dim')}: network_dim = {args.network_dim}: the LoRA rank must be at least 1 "
                        "(typical values 4 to 128)")
    if args.network_alpha is not None and args.network_alpha < 0:
        raise UserError(f"{where('network_alpha')}: network_alpha = {args.network_alpha} must not be negative "
                        "(the scale is alpha / rank; 0 means alpha = rank)")
    for name in ("caption_extension", "caption_extention"):
        value = getattr(args, name)
        if value and ("/" in value or "\\" in value):
            raise UserError(f"{where(name)}: {name} = {value!r} contains a folder separator; it is only the file ending "
                            "of the caption files next to the images, e.g. \".caption\" or \".txt\"")
