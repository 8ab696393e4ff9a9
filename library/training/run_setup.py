"""Setting a run up, in the order the parts depend on each other:

    dataset items (and validation split) -> accelerator, precision plan, seed -> models loaded
    -> VAE and text encoders placed -> latents and text-encoder outputs cached (then released
    when nothing later needs them) -> UNet placed -> network attached (checkpointing, compile)
    -> optimizer, step plan, lr schedule, loss scaling, saver, DDP -> trackers and sample prompts.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from library.data.images import SkipLog
from library.errors import UserError
from library.training.config.config_checks import check_combinations
from library.training.config.dataset_config import dataset_specs
from library.training.config.kohya_compat import dataset_difference_notices
from library.training.config.sample_prompts import load_sample_prompts
from library.training.inputs.condition_masks import attach_masks
from library.training.inputs.dataset_attributes import dataset_multipliers, unused_attribute_keys
from library.training.inputs.latent_source import LatentSource
from library.training.inputs.pixel_loading import pixel_loader
from library.training.inputs.run_plan import batches_per_process, dataset_summary, plan_steps
from library.training.inputs.text_conditioning import TextEncoderCache, cached_captions
from library.training.inputs.train_items import build_items, split_validation
from library.training.memory.memory_preflight import check_memory
from library.training.network_setup import create_training_network, merge_configured_base_weights, optimizer_param_groups
from library.training.objective import noise as noise_lib
from library.training.objective.batch_objective import BatchObjective
from library.training.optim.lr_schedulers import build_lr_scheduler
from library.training.optim.optimizers import build_optimizer
from library.training.optim.schedule_free import ScheduleFreeModes
from library.training.outputs.checkpoints import Checkpoints
from library.training.outputs.saving import NetworkSaver
from library.training.parallel import data_parallel, distributed
from library.training.pivotal import setup_pivotal
from library.training.residency.checkpointing import enable_unet_checkpointing
from library.training.residency.compilation import compile_unet
from library.training.residency.loss_scaling import loss_scaling
from library.training.residency.placement import Placement, PrecisionPlan, released_after_caching
from library.training.residency.precision import check_precision, configure_attention, effective_mixed_precision

TEXT_ENCODERS = ("text_encoder1", "text_encoder2")


class RunSetup:
    """The parts of a run, built in order by `setup`; the loop (library/training/loop.py) drives them."""

    def __init__(self, resolved):
        self.args = args = resolved.args
        self.sources, self.notices = resolved.sources, resolved.notices
        self.specs = dataset_specs(args)
        check_combinations(args, self.sources, self.notices, [s for spec in self.specs for s in spec.subsets])
        check_precision(args)  # before any model loads, --print_config included
        self.skipped = SkipLog()
        all_items = build_items(self.specs, self.skipped, self.notices)
        attach_masks(all_items, args.masked_loss, self.notices)  # conditioning_data_dir masks
        self.multipliers = dataset_multipliers(self.specs)  # per-dataset network_multiplier, None when all 1.0
        dataset_difference_notices(args, self.specs, self.notices)
        if unused_attribute_keys(self.specs):
            self.notices.append(f"custom_attributes {', '.join(unused_attribute_keys(self.specs))}: carried as in kohya, "
                                "but only diff_output_preservation changes training")
        split_seed = args.validation_seed if args.validation_seed is not None else (args.seed or 0)
        fraction = args.validation_split or max((spec.validation_split for spec in self.specs), default=0.0)
        self.items, self.val_items = split_validation(all_items, fraction, split_seed)

    # -- setup: load, place, cache, network, optimizer, trackers ------------------------------
    def setup(self):
        self.setup_accelerator()
        self.check_memory()
        self.load_models()
        self.place_for_caching()
        self.cache()
        self.place_for_training()
        self.build_network()
        self.build_optimizer()
        self.init_trackers()

    def setup_accelerator(self) -> None:
        from accelerate import Accelerator

        args = self.args
        self.mixed = effective_mixed_precision(args, self.notices)
        self.log_with = args.log_with if args.log_with and args.logging_dir else None
        if args.log_with and not args.logging_dir:
            self.notices.append("log_with is set but logging_dir is not; not logging")
        # kohya's run folder: <logging_dir>/<log_prefix><timestamp>/network_train/
        run_dir = Path(args.logging_dir) / f"{args.log_prefix or ''}{time.strftime('%Y%m%d%H%M%S')}" if self.log_with else None
        # Without a GPU, accelerate must be told cpu=True or two launched processes never synchronise.
        # Precision is ours (placement + autocast), not accelerate's: "no" whatever `accelerate launch` said.
        # So is torch.compile (of the UNet, torch_compile), whatever ACCELERATE_DYNAMO_BACKEND says.
        self.accelerator = Accelerator(log_with=self.log_with, project_dir=run_dir, cpu=not torch.cuda.is_available(),
                                       mixed_precision="no", dynamo_backend="no",
                                       kwargs_handlers=data_parallel.accelerator_kwargs_handlers(args))
        self.device = self.accelerator.device
        self.placement = Placement(self.device, PrecisionPlan.from_args(args, self.mixed))
        self.autocast_dtype = self.placement.plan.compute_dtype
        # no seed given: process 0 draws one and every process takes it (the same data order and initialisation)
        drawn = args.seed if args.seed is not None else random.randint(0, 2**31 - 1)
        self.seed = drawn if args.seed is not None else distributed.value_of_process_zero(self.accelerator, drawn)
        torch.manual_seed(self.seed)  # the same network initialisation on every process

    def check_memory(self) -> None:
        """memory pre-flight, before any model loads: each process checks its own device; when one
        cannot fit the run every process stops (one going on would wait for the others at its first
        collective), and process 0's checkpointing policy is everyone's."""
        images = len({item.image_path for item in self.items + self.val_items})
        try:
            policy, error = check_memory(self.args, images=images, device_type=self.device.type), None
        except UserError as caught:
            policy, error = None, caught
        if distributed.any_process(self.accelerator, error is not None):
            raise error or UserError("another process of this run found too little free memory (its error line names both "
                                     "numbers and the settings that would fit); every process stopped before loading the models")
        self.checkpoint_policy = distributed.value_of_process_zero(self.accelerator, policy)

    def load_models(self) -> None:
        """load: every component into host memory in its storage dtype; pivotal tokens; the attention backend."""
        from library.models.sdxl_loader import load_sdxl

        args = self.args
        self.model = load_sdxl(args.pretrained_model_name_or_path, vae=args.vae, tokenizer_dir=args.tokenizer_cache_dir,
                               dtypes=self.placement.plan.load_dtypes(merging=bool(args.base_weights)))
        for module in (self.model.unet, *self.model.text_encoders, self.model.vae):
            module.requires_grad_(False)
            module.eval()
        merge_configured_base_weights(args, self.model)  # base_weights, into the fp32 weights before placement
        # pivotal tuning: new tokens in both tokenizers/encoders (a no-op object when train_text_encoder_ti is off)
        self.pivotal = setup_pivotal(args, self.model, self.items, self.notices, seed=self.seed)
        self.attention = configure_attention(self.model.unet, args, self.notices)
        self.train_unet = not args.network_train_text_encoder_only
        self.train_text_encoder = not args.network_train_unet_only

    def place_for_caching(self) -> None:
        """place: the VAE and the text encoders on the device in their dtypes, before anything is encoded."""
        self.placement.place("vae", self.model.vae, "cache latents")
        for name, encoder in zip(TEXT_ENCODERS, self.model.text_encoders):
            self.placement.place(name, encoder, "encode captions")

    def cache(self) -> None:
        """cache: latents (VAE, batched by vae_batch_size) and text-encoder outputs; then what no
        later step needs leaves the device."""
        args = self.args
        self.placement.use("vae", self.model.vae, "cache latents")
        # no autocast: the VAE runs in its own dtype (fp32 with no_half_vae), as the caching tools run it
        self.latents = LatentSource(self.items, self.model.vae, args, self.notices)
        self.latents.prepare(self.accelerator)
        self.val_latents = LatentSource(self.val_items, self.model.vae, args, self.notices)
        self.val_latents.prepare(self.accelerator)
        # uncached samples: decoding and augmentation in max_data_loader_n_workers processes
        self.pixel_loader = pixel_loader(self.latents.pixels, self.latents.cached_indices, args)
        self.te_cache = None
        if args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk:
            for name, encoder in zip(TEXT_ENCODERS, self.model.text_encoders):
                self.placement.use(name, encoder, "cache text-encoder outputs")
            self.te_cache = TextEncoderCache(self.model, self.items, args)
            with self.placement.autocast():
                self.te_cache.prepare(cached_captions(self.items), self.accelerator)
        released = released_after_caching(latents_cached=not (self.latents.needs_vae or self.val_latents.needs_vae),
                                          text_cached=self.te_cache is not None, samples=bool(args.sample_prompts),
                                          validation=bool(self.val_items))
        if "vae" in released:
            self.placement.release("vae", self.model.vae, "latents cached; no samples")
        if "text_encoder1" in released:
            self.release_text_encoders()

    def place_for_training(self) -> None:
        """place: the UNet on the device in its dtype (fp8 weights with fp8_base)."""
        self.placement.place("unet", self.model.unet, "training")

    def build_network(self) -> None:
        """network: create and attach it, gradient checkpointing, on the device in its dtype."""
        args = self.args
        self.network, self.network_module = create_training_network(args, self.model, self.train_unet, self.train_text_encoder)
        torch.manual_seed(self.seed + self.accelerator.process_index)  # dropout may differ between processes
        if args.gradient_checkpointing:  # (cpu_offload_checkpointing implies it: config/kohya_compat.py)
            enable_unet_checkpointing(self.model.unet, args.cpu_offload_checkpointing, self.device, self.notices,
                                      self.checkpoint_policy)
            self.model.unet.train()  # diffusers only checkpoints in training mode; no dropout in SDXL blocks
            if self.train_text_encoder:
                for encoder in self.model.text_encoders:
                    encoder.gradient_checkpointing_enable()
                    encoder.train()
            self.network.enable_gradient_checkpointing()
        self.network.prepare_grad_etc(self.model.text_encoders, self.model.unet)
        # full_fp16 / full_bf16: the trainable weights in the half dtype too (kohya's network.to(weight_dtype))
        self.network.to(self.device, self.autocast_dtype if (args.full_fp16 or args.full_bf16) else None)
        self.compiled = compile_unet(self.model.unet, args, self.notices)  # torch_compile: after the network is attached

    def build_optimizer(self) -> None:
        """optimizer: parameter groups, optimizer, step plan, lr schedule, loss scaling, saver."""
        args = self.args
        te_lr = args.text_encoder_lr if self.train_text_encoder else None
        prepared = optimizer_param_groups(self.network, te_lr, args.unet_lr, args.learning_rate, self.notices)
        self.param_groups, self.group_names = prepared if isinstance(prepared, tuple) else (prepared, None)
        self.pivotal.add_param_groups(self.param_groups, self.group_names, args, self.device)  # pivotal: new-row groups
        if not self.param_groups:
            raise UserError("the network has no trainable parameters (every learning rate is 0, or no module matched)")
        self.trainable = [p for group in self.param_groups for p in group["params"]]
        # fp16: loss scaling (and with full_fp16 an optimizer over fp32 master copies); None otherwise
        self.scaler = loss_scaling(self.mixed, args.full_fp16, self.device.type, self.param_groups)
        self.optimizer = build_optimizer(args, self.scaler.optimizer_groups() if self.scaler else self.param_groups)
        # train mode for steps, eval mode to sample/validate/save (the fp16 weights follow fp32 masters)
        self.schedule_free = ScheduleFreeModes(self.optimizer, on_change=self.scaler.masters_to_model if self.scaler else None)
        self.schedule_free.train()
        self.summary = dataset_summary(self.items, self.specs, args)
        world = self.accelerator.num_processes
        self.summary["total_batch_size"] = args.train_batch_size * world * args.gradient_accumulation_steps
        self.steps_per_epoch, self.max_steps = plan_steps(args, self.summary, world)
        self.epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        # kohya's save_n_epoch_ratio: about N saves over the run
        self.save_every_n_epochs = max(1, self.epochs // args.save_n_epoch_ratio) if args.save_n_epoch_ratio else args.save_every_n_epochs
        self.summary["max_train_steps"] = self.max_steps
        self.lr_scheduler = build_lr_scheduler(args, self.optimizer, self.max_steps, self.notices)
        self.noise_scheduler = noise_lib.make_noise_scheduler(args.zero_terminal_snr, args.v_parameterization)
        self.saver = NetworkSaver(args, self.summary, time.time(), every_n_epochs=self.save_every_n_epochs)
        self.saver.describe_run(items=self.items, val_items=self.val_items, specs=self.specs, optimizer=self.optimizer, seed=self.seed,
                                batches_per_epoch=batches_per_process(self.summary["batches_per_epoch"], world),
                                epochs=self.epochs)
        self.saver.extra_metadata = self.pivotal.lora_metadata  # pivotal: tokens and trigger phrase in LoRA metadata
        self.checkpoints = Checkpoints(
            accelerator=self.accelerator, saver=self.saver, network=self.network, optimizer=self.optimizer,
            lr_scheduler=self.lr_scheduler, scaler=self.scaler, schedule_free=self.schedule_free, pivotal=self.pivotal,
            latents=self.latents, output_dir=Path(args.output_dir), output_name=args.output_name,
            keep_epoch_states=args.save_last_n_epochs_state, keep_step_states=args.save_last_n_steps_state,
            every_n_epochs=self.save_every_n_epochs)
        self.ranks_checked = 0
        # data parallel: DDP over the trained tensors (the network and pivotal rows); itself with one process
        self.ddp = data_parallel.prepare(self.accelerator, self.network, self.pivotal.rows)
        self.objective = BatchObjective(
            args=args, model=self.model, device=self.device, items=self.items, latents=self.latents, te_cache=self.te_cache,
            pivotal=self.pivotal, noise_scheduler=self.noise_scheduler, placement=self.placement, accelerator=self.accelerator,
            ddp=self.ddp, network=self.network, multipliers=self.multipliers, trainable=self.trainable, max_steps=self.max_steps,
            text_grad=self.train_text_encoder or self.pivotal.needs_grad)

    def init_trackers(self) -> None:
        """trackers: TensorBoard / wandb, and the sample prompts."""
        args = self.args
        self.tensorboard = None
        if self.log_with:
            init_kwargs = {}
            if args.log_tracker_config:
                import toml

                init_kwargs = toml.load(args.log_tracker_config)
            if args.wandb_api_key:
                import os

                os.environ.setdefault("WANDB_API_KEY", args.wandb_api_key)
            if args.wandb_run_name:
                init_kwargs.setdefault("wandb", {})["name"] = args.wandb_run_name
            self.accelerator.init_trackers(args.log_tracker_name or "network_train", config=self.tracker_config(), init_kwargs=init_kwargs)
            if self.log_with in ("tensorboard", "all"):
                self.tensorboard = self.accelerator.get_tracker("tensorboard", unwrap=False)
        self.sample_prompts = load_sample_prompts(args.sample_prompts, self.notices) if args.sample_prompts else []
        if not self.sample_prompts and (args.sample_every_n_steps or args.sample_every_n_epochs or args.sample_at_first):
            self.notices.append("sample_every_n_* is set but sample_prompts is not; no samples will be made")

    def release_text_encoders(self) -> None:
        """With cached text-encoder outputs and nothing else needing them (no samples, no validation),
        the encoders' weights leave memory for the rest of the run (moved to the meta device)."""
        for name, encoder in zip(TEXT_ENCODERS, self.model.text_encoders):
            self.placement.release(name, encoder, "text-encoder outputs cached")
        self.notices.append("text-encoder outputs are cached: the text encoders were released from memory for training")

    def tracker_config(self) -> dict | None:
        if not self.args.log_config:
            return None
        return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(self.args).items() if v is not None}
