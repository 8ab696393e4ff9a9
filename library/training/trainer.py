"""The training run of sdxl_train_network.py, readable top to bottom.

    config -> dataset items -> model -> latents (and text) caches -> network -> optimizer
    -> for each epoch, for each batch: noise, UNet, loss, backward, (every N batches) step
    -> saves at the configured cadence and at the end.
Everything a step needs is in small helpers in library/training/; this file only sequences them.
"""
from __future__ import annotations

import hashlib
import math
import random
import time
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from library.data.images import SkipLog
from library.errors import UserError
from library.file_io import WriteFailed
from library.training.objective import loss as loss_lib
from library.training.parallel import data_parallel
from library.training.parallel import distributed
from library.training.objective import noise as noise_lib
from library.training.inputs.batch_plan import batches_per_epoch, epoch_batches
from library.data.caption_processing import process_caption
from library.training.residency.checkpointing import enable_unet_checkpointing
from library.training.residency.compilation import compile_unet
from library.training.inputs.condition_masks import attach_masks
from library.training.config.config_checks import check_combinations
from library.training.inputs.dataset_attributes import dataset_multipliers, preservation_rows, preserved_target, unused_attribute_keys
from library.training.config.dataset_config import dataset_specs
from library.training.config.kohya_compat import dataset_difference_notices
from library.training.inputs.latent_source import ImageBroken, LatentSource
from library.training.residency.loss_scaling import loss_scaling
from library.training.optim.lr_schedulers import build_lr_scheduler
from library.training.memory.memory_preflight import check_memory
from library.training.network_setup import create_training_network, merge_configured_base_weights, optimizer_param_groups
from library.training.optim.optimizers import build_optimizer
from library.training.pivotal import setup_pivotal
from library.training.inputs.pixel_loading import pixel_loader, sample_randomness
from library.training.residency.placement import Placement, PrecisionPlan
from library.training.residency.precision import check_precision, configure_attention, effective_mixed_precision
from library.training.outputs.save_rescue import save_or_rescue
from library.training.outputs.saving import NetworkSaver
from library.training.optim.schedule_free import ScheduleFreeModes
from library.models.sdxl_conditioning import encode_captions, time_ids
from library.training.outputs import preflight
from library.training.outputs.run_control import RunStopped, StopRequest
from library.training.config.sample_prompts import load_sample_prompts
from library.training.sampling import write_samples
from library.training.inputs.text_conditioning import TextEncoderCache, cached_captions
from library.training.inputs.train_items import build_items, split_validation
from library.training.outputs.train_state import Progress, find_state, load_state, prune_states, save_state, state_folder_name
from library.training.objective import validation

VAE_SCALE = 0.13025
TEXT_ENCODERS = ("text_encoder1", "text_encoder2")


def dataset_summary(items, specs, args) -> dict:
    sizes = [spec.batch_size for spec in specs]
    per_epoch = batches_per_epoch(items, sizes)
    tags = {}
    for item in items:
        folder = Path(item.subset.image_dir or ".").name
        counter = tags.setdefault(folder, Counter())
        counter.update(t.strip() for t in item.caption.split(item.subset.caption_separator) if t.strip())
    return {
        "num_train_images": sum(1 for i in items if not i.is_reg),
        "num_reg_images": sum(1 for i in items if i.is_reg),
        "batches_per_epoch": per_epoch,
        "buckets": Counter(i.bucket for i in items),
        "resolution": specs[0].resolution,
        "batch_sizes": sizes,
        "tag_frequency": {k: dict(v) for k, v in tags.items()},
        "dataset_dirs": {Path(s.image_dir or ".").name: {"n_repeats": s.num_repeats, "img_count": sum(1 for i in items if i.subset is s)}
                         for spec in specs for s in spec.subsets},
    }


def batches_per_process(batches: int, world_size: int) -> int:
    """Each process's share of an epoch's batches, as accelerate's even_batches data loader (kohya's) gives
    it: ceil(batches / processes), the last processes repeating the epoch's first batches."""
    return math.ceil(batches / world_size)


def plan_steps(args, summary: dict, world_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps); max_train_epochs wins over max_train_steps."""
    batches = batches_per_process(summary["batches_per_epoch"], world_size)
    if batches == 0:
        raise UserError("the dataset gives no batch per epoch")
    per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    total = args.max_train_epochs * per_epoch if args.max_train_epochs else args.max_train_steps
    return per_epoch, total


def print_dataset_summary(summary: dict, args, per_epoch: int, total: int, skipped: SkipLog) -> None:
    print(f"images: {summary['num_train_images']} training, {summary['num_reg_images']} regularisation")
    for folder, info in summary["dataset_dirs"].items():
        print(f"  {folder}: {info['img_count']} images x {info['n_repeats']} repeats")
    print("buckets: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(summary["buckets"].items())))
    print(f"batches per epoch: {summary['batches_per_epoch']}; optimizer steps per epoch: {per_epoch}; total steps: {total}"
          f" (~{math.ceil(total / per_epoch)} epochs)")
    for line in skipped.summary_lines():
        print(line)


class Trainer:
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
        # what gradient checkpointing recomputes: "auto" is the memory check's to decide (train()), else full
        self.checkpoint_policy = args.gradient_checkpointing_policy if args.gradient_checkpointing_policy != "auto" else "full"

    # -- setup: load, place, cache, network, optimizer, trackers ------------------------------
    def setup(self):
        self.setup_accelerator()
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
        self.caption_options = [item.subset for item in self.items]  # a SubsetSpec is a CaptionOptions
        # uncached samples: decoding and augmentation in max_data_loader_n_workers processes
        self.pixel_loader = pixel_loader(self.latents.pixels, self.latents.cached_indices, args)
        self.te_cache = None
        if args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk:
            for name, encoder in zip(TEXT_ENCODERS, self.model.text_encoders):
                self.placement.use(name, encoder, "cache text-encoder outputs")
            self.te_cache = TextEncoderCache(self.model, self.items, args)
            with self.placement.autocast():
                self.te_cache.prepare(cached_captions(self.items), self.accelerator)
        if not (args.sample_prompts or self.latents.needs_vae or self.val_latents.needs_vae):
            self.placement.release("vae", self.model.vae, "latents cached; no samples")
        if self.te_cache is not None and not (args.sample_prompts or self.val_items):
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
        self.ranks_checked = 0
        # data parallel: DDP over the trained tensors (the network and pivotal rows); itself with one process
        self.ddp = data_parallel.prepare(self.accelerator, self.network, self.pivotal.rows)

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

    # -- one batch ---------------------------------------------------------------------------
    def sample_seed(self, epoch: int, index: int, occurrence: int) -> int:
        """Every random choice for one sample (noise, timestep, flip, caption) derives from this, so
        results do not depend on batch size, accumulation, process count or where a run resumed."""
        digest = hashlib.blake2b(f"{self.seed}/{epoch}/{index}/{occurrence}".encode(), digest_size=6).digest()
        return int.from_bytes(digest, "little")

    def conditioning(self, indices, seeds, epoch, step):
        if self.te_cache is not None:
            context, pooled = self.te_cache.get(indices)
            return context.to(self.device), pooled.to(self.device)
        captions = [process_caption(self.items[i].caption, self.caption_options[i], random.Random(seed), epoch, step, self.max_steps)
                    for i, seed in zip(indices, seeds)]
        captions = self.pivotal.prepare_captions(captions, step, self.max_steps)  # pivotal: TOK -> <s0><s1>; pivot
        with torch.set_grad_enabled(self.train_text_encoder or self.pivotal.needs_grad):
            return encode_captions(self.model, captions, self.args.max_token_length, self.args.weighted_captions)

    def batch_inputs(self, indices, seeds, pixels=None, items=None, source=None):
        """`pixels`: {(index, seed): images} prepared by loader workers (pixel_loading.PixelLoader), or None.
        `items` / `source`: another item list and its LatentSource (validation); the training ones by default."""
        items, source = items or self.items, source or self.latents
        latents, masks, originals, crops, targets = [], [], [], [], []
        for index, seed in zip(indices, seeds):
            item = items[index]
            flip, augment = sample_randomness(item, seed)
            sample, mask, crop = source.get(index, flip, augment, (pixels or {}).get((index, seed)))
            latents.append(sample)
            masks.append(mask)
            placement = item.placement
            w, h = placement.original_size
            originals.append((h, w))
            crops.append((crop[1], crop[0]))
            targets.append((placement.bucket[1], placement.bucket[0]))
        latents = torch.stack(latents).to(self.device) * VAE_SCALE
        mask = None
        if any(m is not None for m in masks):
            mask = torch.stack([m if m is not None else torch.ones(latents.shape[2] * 8, latents.shape[3] * 8) for m in masks])
            mask = torch.nn.functional.interpolate(mask[:, None].float(), size=latents.shape[2:], mode="area").to(self.device)
        ids = time_ids(originals, crops, targets).to(self.device)
        weights = torch.tensor([self.args.prior_loss_weight if items[i].is_reg else 1.0 for i in indices])
        return latents, mask, ids, weights

    def sample_noise(self, latents, seeds):
        """(noise, timesteps, noisy latents), each sample drawn from its own generator."""
        noises, timesteps, noisy = [], [], []
        for row, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            sample = latents[row : row + 1]
            noise = noise_lib.training_noise(sample, self.args, generator)  # drawn on the CPU, returned on the device
            timestep = noise_lib.sample_timesteps(1, self.args.min_timestep, self.args.max_timestep, generator)
            noisy.append(noise_lib.noisy_latents(self.noise_scheduler, sample, noise, timestep, self.args, generator))
            noises.append(noise)
            timesteps.append(timestep)
        return torch.cat(noises), torch.cat(timesteps), torch.cat(noisy)

    def predict(self, indices, seeds, epoch, step, latents, ids):
        """The forward pass that uses the trained weights, run by DDP (data_parallel.TrainableWeights):
        (prediction, noise, timesteps, noisy latents, context, pooled, the timesteps on the CPU)."""
        context, pooled = self.conditioning(indices, seeds, epoch, step)
        noise, cpu_timesteps, noisy = self.sample_noise(latents, seeds)  # (drawn on the CPU: the loss weights read them there)
        timesteps = cpu_timesteps.to(self.device)
        prediction = self.model.unet(noisy, timesteps, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        if self.multipliers and self.accelerator.num_processes > 1:  # a dataset at network_multiplier 0 uses no trained tensor:
            prediction = prediction + 0.0 * torch.stack([p.sum() for p in self.trainable]).sum()  # zeros, so DDP's backward still runs
        return prediction, noise, timesteps, noisy, context, pooled, cpu_timesteps

    def batch_loss(self, indices, seeds, epoch, step, sync: bool = True, pixels=None):
        """The batch's loss, or None when every image in it is broken (see LatentSource.usable).
        `sync` False (inside an accumulation group) skips DDP's gradient all-reduce; `pixels` are
        the batch's images prepared by loader workers."""
        args = self.args
        while True:
            indices, seeds = self.latents.usable(indices, seeds)  # a broken image leaves the batch, the rest stay as they were
            if not indices:
                return None
            try:
                latents, mask, ids, sample_weights = self.batch_inputs(indices, seeds, pixels)
                break
            except ImageBroken:
                continue
        multiplier = self.multipliers[self.items[indices[0]].dataset_index] if self.multipliers else 1.0
        if self.multipliers:  # a batch never mixes datasets
            self.network.set_multiplier(multiplier)
        try:
            with self.placement.autocast():
                with data_parallel.gradient_sync(self.accelerator, self.ddp, sync):
                    prediction, noise, timesteps, noisy, context, pooled, cpu_timesteps = self.ddp(
                        self.predict, indices, seeds, epoch, step, latents, ids)

                def predict(rows=slice(None)):
                    return self.model.unet(noisy[rows], timesteps[rows], context[rows],
                                           added_cond_kwargs={"text_embeds": pooled[rows], "time_ids": ids[rows]}).sample

                target = noise_lib.prediction_target(self.noise_scheduler, latents, noise, timesteps, args.v_parameterization)
                rows = preservation_rows(self.items, indices)  # custom_attributes diff_output_preservation
                if rows:
                    target = preserved_target(self.network, multiplier, target, rows, predict)
        finally:
            if self.multipliers:
                self.network.set_multiplier(1.0)  # samples and validation use the LoRA at full strength
        return loss_lib.training_loss(args, self.noise_scheduler, prediction, target, cpu_timesteps, sample_weights, mask)

    def zero_loss(self, sync: bool):
        """0 x every trained tensor, through DDP like a real batch, so its gradients (zeros) are all-reduced."""
        with data_parallel.gradient_sync(self.accelerator, self.ddp, sync):
            return self.ddp(lambda: torch.stack([p.sum() for p in self.trainable]).sum() * 0.0)

    def all_finite(self, value: float) -> bool:
        """Whether every process's loss is finite (each must take the same branch, or DDP hangs)."""
        return not distributed.any_process(self.accelerator, not math.isfinite(value))

    # -- optimizer step ----------------------------------------------------------------------
    def optimizer_step(self) -> dict:
        logs = {}
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.args.max_grad_norm:
            clipped = self.scaler.optimized if self.scaler is not None else self.trainable
            torch.nn.utils.clip_grad_norm_(clipped, self.args.max_grad_norm, foreach=True)  # multi-tensor on CPU too
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.args.ddp_check_sync and self.accelerator.num_processes > 1:
            self.check_ranks_in_sync()
        if self.args.scale_weight_norms:
            scaled, mean_norm, max_norm = self.network.apply_max_norm_regularization(self.args.scale_weight_norms, self.device)
            logs.update({"Keys Scaled": scaled, "Average key norm": mean_norm, "max_norm/max_key_norm": max_norm})
            if self.scaler is not None:
                self.scaler.model_to_masters()
        return logs

    def check_ranks_in_sync(self) -> None:
        """ddp_check_sync: a mismatch would silently train several different LoRAs, so it stops the run."""
        data_parallel.check_in_sync(self.accelerator, self.trainable, self.ranks_checked + 1)
        self.ranks_checked += 1

    def lr_logs(self) -> dict:
        logs = {}
        names = self.group_names or [f"group{i}" for i in range(len(self.optimizer.param_groups))]
        for index, group in enumerate(self.optimizer.param_groups):
            name = names[index] if index < len(names) else f"group{index}"
            tag = {"unet": "lr/unet", "textencoder": "lr/textencoder"}.get(name, f"lr/{name.replace(' ', '_')}")
            logs[tag] = group.get("lr") or 0.0
            if "d" in group:
                logs[f"lr/d*lr/{name.replace(' ', '_')}"] = group["d"] * (group.get("lr") or 0.0)
        return logs

    def epoch_seeds(self, batches, epoch) -> list[list[int]]:
        """Per-sample seeds; the k-th appearance of an item in an epoch has its own seed."""
        seen: Counter = Counter()
        result = []
        for indices in batches:
            row = []
            for index in indices:
                row.append(self.sample_seed(epoch, index, seen[index]))
                seen[index] += 1
            result.append(row)
        return result

    # -- events ------------------------------------------------------------------------------
    def save_checkpoint(self, kind: str, progress: Progress, with_state: bool, epoch: int | None = None) -> Path | None:
        """LoRA file (kind "epoch", "step" or "final") plus, when asked, a resumable state holding
        `progress` (the position training continues from). `epoch` numbers an epoch save. A save that
        fails twice goes to a fallback folder and stops the run (save_rescue)."""
        args, accelerator = self.args, self.accelerator
        accelerator.wait_for_everyone()
        rng_states = distributed.gathered_rng_states(accelerator) if with_state else None  # every process's, to process 0
        path = None
        if accelerator.is_main_process:
            path = save_or_rescue(lambda folder: self.write_checkpoint(folder, kind, progress, with_state, epoch, rng_states),
                                  Path(args.output_dir), args.output_name)
            self.saver.remove_old(epoch=epoch if kind == "epoch" else None, step=progress.global_step if kind == "step" else None)
            if with_state:
                prune_states(Path(args.output_dir), args.output_name, args.save_last_n_epochs_state, args.save_last_n_steps_state,
                             epoch if kind == "epoch" else None, progress.global_step if kind == "step" else None,
                             self.save_every_n_epochs)
        accelerator.wait_for_everyone()
        return path

    def write_checkpoint(self, folder: Path, kind: str, progress: Progress, with_state: bool, epoch: int | None,
                         rng_states: list[dict] | None = None) -> Path:
        completed_epochs = epoch if epoch is not None else progress.epoch - (progress.batches_done_in_epoch == 0)
        with self.schedule_free.evaluating():  # schedule-free: files hold the averaged weights (states: train mode)
            path = self.saver.save(self.network, completed_epochs, progress.global_step, kind, folder)
            self.pivotal.save_embeddings(path)  # pivotal: <lora stem>_emb.safetensors next to the LoRA
        print(f"saved {path}")
        if with_state:
            name = state_folder_name(self.args.output_name, epoch=epoch if kind == "epoch" else None,
                                     step=progress.global_step if kind == "step" else None)
            state = save_state(folder / name, progress, self.network, self.optimizer, self.lr_scheduler, self.scaler,
                               extra={"pivotal": self.pivotal.state_dict(), "broken_images": self.latents.broken_state()},
                               rng_states=rng_states)
            print(f"saved state {state}")
        return path

    def sample(self, epoch: int | None, step: int) -> None:
        if not self.sample_prompts:
            return
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.network.eval()
            self.schedule_free.eval()  # schedule-free: sample the averaged weights
            try:
                written = write_samples(self.model, self.sample_prompts, Path(self.args.output_dir), self.args.output_name, epoch,
                                        step, self.summary["resolution"], self.args.sample_sampler, self.args.max_token_length,
                                        self.args.v_parameterization, prompt_transform=self.pivotal.replace_in_prompt,
                                        base_seed=self.seed, autocast=self.placement.autocast)
            except (WriteFailed, OSError) as error:  # samples are expendable: training goes on (the next save rescues the weights)
                tqdm.write(f"notice: sample images not written: {error}")
                written = []
            finally:
                self.schedule_free.train()
            self.network.train()
            if self.tensorboard is not None:
                import numpy as np

                for index, (path, image) in enumerate(written):
                    self.tensorboard.writer.add_image(f"sample/{index:02d}", np.asarray(image), step, dataformats="HWC")
        self.accelerator.wait_for_everyone()

    def validation_loss(self) -> float | None:
        return validation.validation_loss(self)  # kohya's validation through the training loss path

    def log_epoch(self, logs: dict, epoch: int, global_step: int) -> None:
        """Epoch metrics as kohya logs them: TensorBoard at step = epoch (its epoch graphs), every other
        tracker at the global step with `epoch` and `global_step` fields (W&B drops a step that goes back)."""
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log(logs, step=epoch)
            else:
                tracker.log({**logs, "epoch": epoch, "global_step": global_step}, step=global_step)

    def due(self, every: int | None, count: int) -> bool:
        return bool(every) and count % every == 0

    # -- the run -----------------------------------------------------------------------------
    def starting_progress(self) -> Progress:
        args = self.args
        if args.resume:
            folder = find_state(args.resume)
            progress, extra = load_state(folder, self.network, self.optimizer, self.lr_scheduler, self.scaler,
                                         rank=self.accelerator.process_index, device=self.device, notices=self.notices)
            self.schedule_free.train()  # our states are saved in train mode; one saved in eval mode is switched back
            if extra.get("pivotal"):
                self.pivotal.load_state_dict(extra["pivotal"])
            self.latents.restore_broken(extra.get("broken_images"))
            if progress.seed != self.seed:
                self.notices.append(f"resuming a run trained with seed {progress.seed}; using it (not {self.seed}) for identical data order")
                self.seed = progress.seed
            print(f"resumed from {folder} at step {progress.global_step} (epoch {progress.epoch}, batch {progress.batches_done_in_epoch})")
            return progress
        progress = Progress(seed=self.seed)
        if args.initial_epoch or args.initial_step:
            step = args.initial_step if args.initial_step is not None else (args.initial_epoch - 1) * self.steps_per_epoch
            progress.global_step = step
            progress.epoch = step // self.steps_per_epoch + 1
            if args.skip_until_initial_step:
                progress.batches_done_in_epoch = (step % self.steps_per_epoch) * args.gradient_accumulation_steps
            for _ in range(step):
                self.lr_scheduler.step()
        return progress

    def run(self) -> Path | None:
        args, accelerator = self.args, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        progress = self.starting_progress()
        if accelerator.is_main_process:
            print(f"training {self.max_steps} steps ({self.epochs} epochs of {self.steps_per_epoch}), {len(self.trainable):,} tensors, "
                  f"attention {self.attention}, precision {self.mixed}, seed {self.seed}, {world} process(es)")
        if args.sample_at_first and progress.global_step == 0:
            self.sample(0, 0)
        stop = StopRequest().install()
        bar = tqdm(total=self.max_steps, initial=progress.global_step, desc="steps", disable=not accelerator.is_main_process)
        self.network.train()
        try:
            while progress.global_step < self.max_steps and progress.epoch <= self.epochs:
                if self.run_epoch(progress, world, rank, bar, stop):  # stopped on request, state saved
                    state = Path(args.output_dir) / state_folder_name(args.output_name, step=progress.global_step)
                    raise RunStopped(stop.exit_code, progress.global_step, state, args.output_dir)
        finally:
            stop.restore()
            bar.close()
        final = self.save_checkpoint("final", progress, with_state=args.save_state or args.save_state_on_train_end)
        if self.ranks_checked and accelerator.is_main_process:
            print(f"ddp_check_sync: all {world} processes held identical network weights after each of {self.ranks_checked} steps")
        accelerator.end_training()
        return final

    def run_epoch(self, progress: Progress, world: int, rank: int, bar, stop) -> bool:
        """Train the rest of `progress.epoch`; True when a stop was requested (and saved)."""
        args, accelerator = self.args, self.accelerator
        epoch = progress.epoch
        self.network.on_epoch_start(self.model.text_encoders, self.model.unet)
        batches = epoch_batches(self.items, self.summary["batch_sizes"], self.seed, epoch)
        # as accelerate's even_batches (kohya): the epoch's first batches again, until every process has as many
        batches = batches + [batches[i % len(batches)] for i in range(-len(batches) % world)]
        seeds = self.epoch_seeds(batches, epoch)[rank::world]
        batches = batches[rank::world]
        pending, group_start = 0, progress.batches_done_in_epoch
        start = progress.batches_done_in_epoch
        prepared = self.pixel_loader.epoch(batches[start:], seeds[start:]) if self.pixel_loader else None  # loader workers
        for batch_index in range(progress.batches_done_in_epoch, len(batches)):
            will_step = pending + 1 >= args.gradient_accumulation_steps or batch_index == len(batches) - 1
            loss = self.batch_loss(batches[batch_index], seeds[batch_index], epoch, progress.global_step, sync=will_step,
                                   pixels=next(prepared) if prepared else None)
            self.latents.share_broken(accelerator)  # every process takes the same stop decision
            if self.latents.too_many_broken():
                self.stop_with_state(progress, group_start, self.latents.too_many_error("; the last good state was saved"))
            empty = loss is None
            if empty:  # every image of the batch is broken: a zero gradient keeps the step plan (and all processes) in step
                loss = self.zero_loss(sync=will_step)
            scaled = loss / args.gradient_accumulation_steps
            if scaled.requires_grad:  # not when a dataset trains at network_multiplier 0 (the LoRA is off)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            # the batch's one device-to-host sync, taken once backward is queued (on a GPU nothing waits before it);
            # a non-finite loss stops before the optimizer steps (its gradients are dropped with the group)
            value = loss.item()
            if not self.all_finite(value):
                self.stop_with_state(progress, group_start, UserError(
                    f"loss became {value} at step {progress.global_step + 1} (epoch {epoch}); the last good state was saved. "
                    "Lower the learning rate, use mixed_precision = \"bf16\" instead of fp16, or set no_half_vae = true"
                ))
            pending += 1
            if not empty:
                progress.epoch_losses.append(value)
            if pending < args.gradient_accumulation_steps and batch_index < len(batches) - 1:
                continue
            logs = self.optimizer_step()
            pending, group_start = 0, batch_index + 1
            progress.global_step += 1
            self.pivotal.after_optimizer_step(progress.global_step, self.max_steps)  # pivotal: pull-back; freeze at the pivot
            progress.batches_done_in_epoch = batch_index + 1
            if not empty:
                progress.recent_losses = (progress.recent_losses + [value])[-10:]
            current = progress.recent_losses[-1] if empty and progress.recent_losses else value
            logs.update({"loss/current": current,
                         "loss/average": sum(progress.recent_losses) / max(len(progress.recent_losses), 1), **self.lr_logs()})
            step = progress.global_step
            if self.val_items and self.due(args.validate_every_n_steps, step):
                logs["loss/validation/step_average"] = self.validation_loss()
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{logs['loss/average']:.4f}")
            bar.update(1)
            if self.stop_requested(stop):
                self.save_checkpoint("step", progress, with_state=True)
                return True
            if step < self.max_steps:
                if self.due(args.save_every_n_steps, step):
                    self.save_checkpoint("step", progress, with_state=args.save_state)
                if self.due(args.sample_every_n_steps, step):
                    self.sample(None, step)
            if step >= self.max_steps:
                break
        if progress.batches_done_in_epoch >= len(batches):  # not when the run ended inside the epoch
            self.finish_epoch(progress)
        return False

    def stop_requested(self, stop) -> bool:
        """A signal may reach one process only (a scheduler or `kill` stopping one rank): every process
        learns of it at the same step and stops there too, with the same exit code."""
        if self.accelerator.num_processes == 1:
            return stop.requested
        signum = distributed.max_over_processes(self.accelerator, (stop.signum or 2) if stop.requested else 0)
        if signum and not stop.requested:
            stop.requested, stop.signum = True, signum
        return bool(signum)

    def stop_with_state(self, progress: Progress, group_start: int, error: Exception):
        """Save a resumable state at the last optimizer step (the current group's gradients are
        dropped), then stop with `error`."""
        progress.batches_done_in_epoch = group_start
        self.optimizer.zero_grad(set_to_none=True)
        self.save_checkpoint("step", progress, with_state=True)
        raise error

    def finish_epoch(self, progress: Progress) -> None:
        args, epoch = self.args, progress.epoch
        logs = {"loss/epoch_average": sum(progress.epoch_losses) / max(len(progress.epoch_losses), 1)}
        if self.val_items and (self.due(args.validate_every_n_epochs, epoch) or not args.validate_every_n_epochs):  # kohya: every epoch by default
            logs["loss/validation/epoch_average"] = self.validation_loss()
        self.log_epoch(logs, epoch, progress.global_step)
        finished_run = progress.global_step >= self.max_steps
        progress.epoch += 1
        progress.batches_done_in_epoch = 0
        progress.epoch_losses = []
        if not finished_run:
            if self.due(self.save_every_n_epochs, epoch):
                self.save_checkpoint("epoch", progress, with_state=args.save_state, epoch=epoch)
            if self.due(args.sample_every_n_epochs, epoch):
                self.sample(epoch, progress.global_step)


def debug_dataset(trainer, batches_to_show: int = 8) -> None:
    """--debug_dataset: print what the first batches of epoch 1 hold (images, buckets, crops and the
    captions as augmented for that step), without loading any model."""
    sizes = [spec.batch_size for spec in trainer.specs]
    trainer.seed = trainer.args.seed if trainer.args.seed is not None else 0
    batches = epoch_batches(trainer.items, sizes, trainer.seed, 1)
    options = [item.subset for item in trainer.items]
    for number, (indices, seeds) in enumerate(zip(batches, trainer.epoch_seeds(batches, 1))):
        if number >= batches_to_show:
            break
        bucket = trainer.items[indices[0]].bucket
        print(f"batch {number + 1}: bucket {bucket[0]}x{bucket[1]}")
        for index, seed in zip(indices, seeds):
            item = trainer.items[index]
            caption = process_caption(item.caption, options[index], random.Random(seed), 1, number, 1)
            print(f"  {item.image_path} {item.placement.original_size[0]}x{item.placement.original_size[1]} "
                  f"crop_ltrb={list(item.placement.crop_ltrb)}{' reg' if item.is_reg else ''}: {caption!r}")


def train(resolved) -> Path | None:
    """Run a whole training from a resolved config; returns the final LoRA file (main process)."""
    trainer = Trainer(resolved)
    if resolved.args.debug_dataset:
        debug_dataset(trainer)
        return None
    if resolved.args.print_config:
        summary = dataset_summary(trainer.items, trainer.specs, resolved.args)
        per_epoch, total = plan_steps(resolved.args, summary, 1)
        for notice in trainer.notices:
            print(f"notice: {notice}")
        print_dataset_summary(summary, resolved.args, per_epoch, total, trainer.skipped)
        return None
    with preflight.output_guard(resolved, trainer.items):  # before any model loads
        if resolved.args.resume:
            find_state(resolved.args.resume)  # a missing or damaged state stops the run before the models load
        trainer.checkpoint_policy = check_memory(resolved.args, images=len({item.image_path for item in trainer.items + trainer.val_items}))
        trainer.setup()
        preflight.check_free_space(trainer.args, trainer.network, trainer.optimizer, trainer.max_steps, trainer.epochs,
                                   trainer.save_every_n_epochs, trainer.notices)
        for notice in trainer.notices:
            print(f"notice: {notice}")
        if trainer.skipped:
            print("\n".join(trainer.skipped.summary_lines()))
        final = trainer.run()
        if trainer.latents.broken:
            print(f"{len(trainer.latents.broken)} image(s) could not be read during training and were skipped:")
            print("\n".join(trainer.latents.broken_lines()))
        return final
