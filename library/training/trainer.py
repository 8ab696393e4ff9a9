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
from library.training import loss as loss_lib
from library.training import noise as noise_lib
from library.training.batch_plan import batches_per_epoch, epoch_batches
from library.training.caption_processing import process_caption
from library.training.condition_masks import attach_masks
from library.training.config_checks import check_combinations
from library.training.dataset_attributes import dataset_multipliers, preservation_rows, preserved_target, unused_attribute_keys
from library.training.dataset_config import dataset_specs
from library.training.kohya_compat import dataset_difference_notices
from library.training.latent_source import ImageBroken, LatentSource
from library.training.lr_schedulers import build_lr_scheduler
from library.training.network_setup import create_training_network
from library.training.optimizers import build_optimizer
from library.training.pivotal import setup_pivotal
from library.training.precision import configure_attention, effective_mixed_precision, check_fp8, weight_dtype
from library.training.save_rescue import save_or_rescue
from library.training.saving import NetworkSaver
from library.training.schedule_free import ScheduleFreeModes
from library.models.sdxl_conditioning import encode_captions, time_ids
from library.training import preflight
from library.training.run_control import RunStopped, StopRequest
from library.training.sample_prompts import load_sample_prompts
from library.training.sampling import write_samples
from library.training.text_conditioning import TextEncoderCache, cached_captions
from library.training.train_items import build_items, split_validation
from library.training.train_state import Progress, find_state, load_state, prune_states, save_state, state_folder_name
from library.training.validation import fixed_noise_loss

VAE_SCALE = 0.13025


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


def plan_steps(args, summary: dict, world_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps); max_train_epochs wins over max_train_steps."""
    batches = summary["batches_per_epoch"] // world_size
    if batches == 0:
        raise UserError(f"the dataset gives {summary['batches_per_epoch']} batches per epoch, fewer than {world_size} processes")
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
        check_fp8(args)  # before any model loads, --print_config included
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

    # -- setup -------------------------------------------------------------------------------
    def setup(self):
        from accelerate import Accelerator

        args = self.args
        mixed = effective_mixed_precision(args, self.notices)
        check_fp8(args)
        log_with = args.log_with if args.log_with and args.logging_dir else None
        if args.log_with and not args.logging_dir:
            self.notices.append("log_with is set but logging_dir is not; not logging")
        # kohya's run folder: <logging_dir>/<log_prefix><timestamp>/network_train/
        run_dir = Path(args.logging_dir) / f"{args.log_prefix or ''}{time.strftime('%Y%m%d%H%M%S')}" if log_with else None
        # Without a GPU, accelerate must be told cpu=True or two launched processes never synchronise.
        self.accelerator = Accelerator(log_with=log_with, project_dir=run_dir, cpu=not torch.cuda.is_available())
        self.device = self.accelerator.device
        self.seed = args.seed if args.seed is not None else random.randint(0, 2**31 - 1)
        args.seed = self.seed
        torch.manual_seed(self.seed)  # the same network initialisation on every process
        self.mixed = mixed
        self.autocast_dtype = weight_dtype(mixed)

        from library.models.sdxl_loader import load_sdxl

        self.model = load_sdxl(args.pretrained_model_name_or_path, vae=args.vae, tokenizer_dir=args.tokenizer_cache_dir)
        for module in (self.model.unet, *self.model.text_encoders, self.model.vae):
            module.requires_grad_(False)
            module.eval()
        # pivotal tuning: new tokens in both tokenizers/encoders (a no-op object when train_text_encoder_ti is off)
        self.pivotal = setup_pivotal(args, self.model, self.items, self.notices)
        self.attention = configure_attention(self.model.unet, args, self.notices)
        self.train_unet = not args.network_train_text_encoder_only
        self.train_text_encoder = not args.network_train_unet_only
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        self.latents = LatentSource(self.items, self.model.vae, args, self.notices)
        self.latents.prepare(rank, world, self.accelerator.wait_for_everyone)
        self.val_latents = LatentSource(self.val_items, self.model.vae, args, self.notices)
        self.val_latents.prepare(rank, world, self.accelerator.wait_for_everyone)
        self.caption_options = [item.subset for item in self.items]  # a SubsetSpec is a CaptionOptions
        self.te_cache = None
        if args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk:
            self.te_cache = TextEncoderCache(self.model, self.items, args)
            self.te_cache.prepare(cached_captions(self.items), write=self.accelerator.is_main_process)

        self.network, self.network_module = create_training_network(args, self.model, self.train_unet, self.train_text_encoder)
        torch.manual_seed(self.seed + rank)  # dropout may differ between processes; everything else is per-sample seeded
        if args.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
            self.model.unet.train()  # diffusers only checkpoints in training mode; no dropout in SDXL blocks
            if self.train_text_encoder:
                for encoder in self.model.text_encoders:
                    encoder.gradient_checkpointing_enable()
                    encoder.train()
            self.network.enable_gradient_checkpointing()
        self.network.prepare_grad_etc(self.model.text_encoders, self.model.unet)
        self.network.to(self.device)
        if args.full_fp16 or args.full_bf16:  # only reachable with a GPU (see effective_mixed_precision)
            self.network.to(torch.float16 if args.full_fp16 else torch.bfloat16)
        for module in (self.model.unet, *self.model.text_encoders, self.model.vae):
            module.to(self.device)
        if self.autocast_dtype != torch.float32:  # frozen base weights in the half dtype; the VAE too unless no_half_vae
            for module in (self.model.unet, *self.model.text_encoders) + (() if args.no_half_vae else (self.model.vae,)):
                module.to(dtype=self.autocast_dtype)
        if self.te_cache is not None and not (args.sample_prompts or self.val_items):
            self.release_text_encoders()

        te_lr = args.text_encoder_lr if self.train_text_encoder else None
        prepared = self.network.prepare_optimizer_params(te_lr, args.unet_lr, args.learning_rate)
        self.param_groups, self.group_names = prepared if isinstance(prepared, tuple) else (prepared, None)
        self.pivotal.add_param_groups(self.param_groups, self.group_names, args, self.device)  # pivotal: new-row groups
        if not self.param_groups:
            raise UserError("the network has no trainable parameters (every learning rate is 0, or no module matched)")
        self.trainable = [p for group in self.param_groups for p in group["params"]]
        self.optimizer = build_optimizer(args, self.param_groups)
        self.schedule_free = ScheduleFreeModes(self.optimizer)  # train mode for steps, eval mode to sample/validate/save
        self.schedule_free.train()
        self.summary = dataset_summary(self.items, self.specs, args)
        world = self.accelerator.num_processes
        self.summary["total_batch_size"] = args.train_batch_size * world * args.gradient_accumulation_steps
        self.steps_per_epoch, self.max_steps = plan_steps(args, self.summary, world)
        self.epochs = math.ceil(self.max_steps / self.steps_per_epoch)
        if args.save_n_epoch_ratio:  # kohya: about N saves over the run
            args.save_every_n_epochs = max(1, self.epochs // args.save_n_epoch_ratio)
        self.summary["max_train_steps"] = self.max_steps
        self.lr_scheduler = build_lr_scheduler(args, self.optimizer, self.max_steps, self.notices)
        self.scaler = torch.amp.GradScaler("cuda") if mixed == "fp16" and not args.full_fp16 else None
        self.noise_scheduler = noise_lib.make_noise_scheduler(args.zero_terminal_snr, args.v_parameterization)
        self.saver = NetworkSaver(args, self.summary, time.time())
        self.saver.describe_run(items=self.items, val_items=self.val_items, specs=self.specs, optimizer=self.optimizer,
                                batches_per_epoch=self.summary["batches_per_epoch"] // world, epochs=self.epochs)
        self.saver.extra_metadata = self.pivotal.lora_metadata  # pivotal: tokens and trigger phrase in LoRA metadata
        self.ranks_checked = 0
        self.tensorboard = None
        if log_with:
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
            if log_with in ("tensorboard", "all"):
                self.tensorboard = self.accelerator.get_tracker("tensorboard", unwrap=False)
        self.sample_prompts = load_sample_prompts(args.sample_prompts) if args.sample_prompts else []
        if not self.sample_prompts and (args.sample_every_n_steps or args.sample_every_n_epochs or args.sample_at_first):
            self.notices.append("sample_every_n_* is set but sample_prompts is not; no samples will be made")

    def release_text_encoders(self) -> None:
        """With cached text-encoder outputs and nothing else needing them (no samples, no validation),
        the encoders' weights leave memory for the rest of the run (moved to the meta device)."""
        for encoder in self.model.text_encoders:
            encoder.to("meta")
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

    def batch_inputs(self, indices, seeds):
        latents, masks, originals, crops, targets = [], [], [], [], []
        for index, seed in zip(indices, seeds):
            item = self.items[index]
            augment = random.Random(seed + 1)
            flip = item.subset.flip_aug and augment.random() < 0.5
            sample, mask, crop = self.latents.get(index, flip, augment)
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
        weights = torch.tensor([self.args.prior_loss_weight if self.items[i].is_reg else 1.0 for i in indices])
        return latents, mask, ids, weights

    def sample_noise(self, latents, seeds):
        """(noise, timesteps, noisy latents), each sample drawn from its own generator."""
        noises, timesteps, noisy = [], [], []
        for row, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            sample = latents[row : row + 1]
            noise = noise_lib.training_noise(sample.cpu(), self.args, generator).to(self.device)
            timestep = noise_lib.sample_timesteps(1, self.args.min_timestep, self.args.max_timestep, generator)
            noisy.append(noise_lib.noisy_latents(self.noise_scheduler, sample, noise, timestep, self.args, generator))
            noises.append(noise)
            timesteps.append(timestep)
        return torch.cat(noises), torch.cat(timesteps), torch.cat(noisy)

    def batch_loss(self, indices, seeds, epoch, step):
        """The batch's loss, or None when every image in it is broken (see LatentSource.usable)."""
        args = self.args
        while True:
            indices, seeds = self.latents.usable(indices, seeds)  # a broken image leaves the batch, the rest stay as they were
            if not indices:
                return None
            try:
                latents, mask, ids, sample_weights = self.batch_inputs(indices, seeds)
                break
            except ImageBroken:
                continue
        multiplier = self.multipliers[self.items[indices[0]].dataset_index] if self.multipliers else 1.0
        if self.multipliers:  # a batch never mixes datasets
            self.network.set_multiplier(multiplier)
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.mixed != "no"):
                context, pooled = self.conditioning(indices, seeds, epoch, step)
                noise, timesteps, noisy = self.sample_noise(latents, seeds)
                timesteps = timesteps.to(self.device)

                def predict(rows=slice(None)):
                    return self.model.unet(noisy[rows], timesteps[rows], context[rows],
                                           added_cond_kwargs={"text_embeds": pooled[rows], "time_ids": ids[rows]}).sample

                prediction = predict()
                target = noise_lib.prediction_target(self.noise_scheduler, latents, noise, timesteps, args.v_parameterization)
                rows = preservation_rows(self.items, indices)  # custom_attributes diff_output_preservation
                if rows:
                    target = preserved_target(self.network, multiplier, target, rows, predict)
        finally:
            if self.multipliers:
                self.network.set_multiplier(1.0)  # samples and validation use the LoRA at full strength
        return loss_lib.training_loss(args, self.noise_scheduler, prediction, target, timesteps.cpu(), sample_weights, mask)

    # -- optimizer step ----------------------------------------------------------------------
    def optimizer_step(self) -> dict:
        logs = {}
        if self.accelerator.num_processes > 1:
            for param in self.trainable:
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.args.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.args.max_grad_norm, foreach=True)  # multi-tensor on CPU too
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.accelerator.num_processes > 1:
            self.check_ranks_in_sync()
        if self.args.scale_weight_norms:
            scaled, mean_norm, max_norm = self.network.apply_max_norm_regularization(self.args.scale_weight_norms, self.device)
            logs.update({"Keys Scaled": scaled, "Average key norm": mean_norm, "max_norm/max_key_norm": max_norm})
        return logs

    @torch.no_grad()
    def check_ranks_in_sync(self) -> None:
        """Every process must hold the same network after a step; a mismatch would silently train
        several different LoRAs, so it stops the run."""
        checksum = torch.stack([p.detach().double().sum() for p in self.trainable]).sum().reshape(1).to(self.device)
        gathered = self.accelerator.gather(checksum)
        if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
            raise UserError(f"processes hold different network weights after a step ({gathered.tolist()}); "
                            "launch with accelerate launch --multi_gpu (on CPU too) so gradients are shared")
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
        path = None
        if accelerator.is_main_process:
            path = save_or_rescue(lambda folder: self.write_checkpoint(folder, kind, progress, with_state, epoch),
                                  Path(args.output_dir), args.output_name)
            self.saver.remove_old(epoch=epoch if kind == "epoch" else None, step=progress.global_step if kind == "step" else None)
            if with_state:
                prune_states(Path(args.output_dir), args.output_name, args.save_last_n_epochs_state, args.save_last_n_steps_state,
                             epoch if kind == "epoch" else None, progress.global_step if kind == "step" else None,
                             args.save_every_n_epochs)
        accelerator.wait_for_everyone()
        return path

    def write_checkpoint(self, folder: Path, kind: str, progress: Progress, with_state: bool, epoch: int | None) -> Path:
        completed_epochs = epoch if epoch is not None else progress.epoch - (progress.batches_done_in_epoch == 0)
        with self.schedule_free.evaluating():  # schedule-free: files hold the averaged weights (states: train mode)
            path = self.saver.save(self.network, completed_epochs, progress.global_step, kind, folder)
            self.pivotal.save_embeddings(path)  # pivotal: <lora stem>_emb.safetensors next to the LoRA
        print(f"saved {path}")
        if with_state:
            name = state_folder_name(self.args.output_name, epoch=epoch if kind == "epoch" else None,
                                     step=progress.global_step if kind == "step" else None)
            state = save_state(folder / name, progress, self.network, self.optimizer, self.lr_scheduler, self.scaler,
                               extra={"pivotal": self.pivotal.state_dict(), "broken_images": self.latents.broken_state()})
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
                                        base_seed=self.seed)
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

    @torch.no_grad()
    def validation_loss(self) -> float | None:
        if not self.val_items:
            return None
        limit = self.args.max_validation_steps or len(self.val_items)
        latents, contexts, pooleds, ids = [], [], [], []
        self.network.eval()
        self.schedule_free.eval()  # schedule-free: validate the averaged weights
        for index, item in enumerate(self.val_items[:limit]):
            try:
                latent, _, _ = self.val_latents.get(index, False)
            except ImageBroken:
                continue
            latents.append(latent * VAE_SCALE)
            caption = self.pivotal.replace_in_prompt(item.caption)
            context, pooled = encode_captions(self.model, [caption], self.args.max_token_length, self.args.weighted_captions)
            contexts.append(context)
            pooleds.append(pooled)
            w, h = item.placement.original_size
            ids.append(time_ids([(h, w)], [item.placement.crop_top_left], [(item.bucket[1], item.bucket[0])]))
        if not latents:  # every validation image is broken
            self.schedule_free.train()
            self.network.train()
            return None
        loss = fixed_noise_loss(self.model.unet, latents, torch.cat(contexts), torch.cat(pooleds), torch.cat(ids),
                                seed=self.args.validation_seed if self.args.validation_seed is not None else self.seed,
                                v_parameterization=self.args.v_parameterization)
        self.schedule_free.train()
        self.network.train()
        return loss

    def due(self, every: int | None, count: int) -> bool:
        return bool(every) and count % every == 0

    # -- the run -----------------------------------------------------------------------------
    def starting_progress(self) -> Progress:
        args = self.args
        if args.resume:
            folder = find_state(args.resume)
            progress, extra = load_state(folder, self.network, self.optimizer, self.lr_scheduler, self.scaler)
            self.schedule_free.train()  # our states are saved in train mode; one saved in eval mode is switched back
            if extra.get("pivotal"):
                self.pivotal.load_state_dict(extra["pivotal"])
            self.latents.restore_broken(extra.get("broken_images"))
            if progress.seed != self.seed:
                self.notices.append(f"resuming a run trained with seed {progress.seed}; using it (not {self.seed}) for identical data order")
                self.seed = args.seed = progress.seed
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
        if world > 1 and accelerator.is_main_process:
            print(f"all {world} processes held identical network weights after each of {self.ranks_checked} steps")
        accelerator.end_training()
        return final

    def run_epoch(self, progress: Progress, world: int, rank: int, bar, stop) -> bool:
        """Train the rest of `progress.epoch`; True when a stop was requested (and saved)."""
        args, accelerator = self.args, self.accelerator
        epoch = progress.epoch
        self.network.on_epoch_start(self.model.text_encoders, self.model.unet)
        batches = epoch_batches(self.items, self.summary["batch_sizes"], self.seed, epoch)
        batches = batches[: len(batches) // world * world]
        seeds = self.epoch_seeds(batches, epoch)[rank::world]
        batches = batches[rank::world]
        pending, group_start = 0, progress.batches_done_in_epoch
        for batch_index in range(progress.batches_done_in_epoch, len(batches)):
            loss = self.batch_loss(batches[batch_index], seeds[batch_index], epoch, progress.global_step)
            if self.latents.too_many_broken():
                self.stop_with_state(progress, group_start, self.latents.too_many_error("; the last good state was saved"))
            empty = loss is None
            if empty:  # every image of the batch is broken: a zero gradient keeps the step plan (and all processes) in step
                loss = torch.stack([p.sum() for p in self.trainable]).sum() * 0.0
            elif not torch.isfinite(loss):
                self.stop_with_state(progress, group_start, UserError(
                    f"loss became {loss.item()} at step {progress.global_step + 1} (epoch {epoch}); the last good state was saved. "
                    "Lower the learning rate, use mixed_precision = \"bf16\" instead of fp16, or set no_half_vae = true"
                ))
            scaled = loss / args.gradient_accumulation_steps
            if scaled.requires_grad:  # not when a dataset trains at network_multiplier 0 (the LoRA is off)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            pending += 1
            if not empty:
                progress.epoch_losses.append(loss.item())
            if pending < args.gradient_accumulation_steps and batch_index < len(batches) - 1:
                continue
            logs = self.optimizer_step()
            pending, group_start = 0, batch_index + 1
            progress.global_step += 1
            self.pivotal.after_optimizer_step(progress.global_step, self.max_steps)  # pivotal: pull-back; freeze at the pivot
            progress.batches_done_in_epoch = batch_index + 1
            if not empty:
                progress.recent_losses = (progress.recent_losses + [loss.item()])[-10:]
            current = progress.recent_losses[-1] if empty and progress.recent_losses else loss.item()
            logs.update({"loss/current": current,
                         "loss/average": sum(progress.recent_losses) / max(len(progress.recent_losses), 1), **self.lr_logs()})
            step = progress.global_step
            if self.val_items and self.due(args.validate_every_n_steps, step):
                logs["loss/validation/step_average"] = self.validation_loss()
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{logs['loss/average']:.4f}")
            bar.update(1)
            if stop.requested:
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
        if self.val_items and (self.due(args.validate_every_n_epochs, epoch) or not (args.validate_every_n_epochs or args.validate_every_n_steps)):
            logs["loss/validation/epoch_average"] = self.validation_loss()
        self.accelerator.log(logs, step=epoch)
        finished_run = progress.global_step >= self.max_steps
        progress.epoch += 1
        progress.batches_done_in_epoch = 0
        progress.epoch_losses = []
        if not finished_run:
            if self.due(args.save_every_n_epochs, epoch):
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
        trainer.setup()
        preflight.check_free_space(trainer.args, trainer.network, trainer.optimizer, trainer.max_steps, trainer.epochs,
                                   trainer.notices)
        for notice in trainer.notices:
            print(f"notice: {notice}")
        if trainer.skipped:
            print("\n".join(trainer.skipped.summary_lines()))
        final = trainer.run()
        if trainer.latents.broken:
            print(f"{len(trainer.latents.broken)} image(s) could not be read during training and were skipped:")
            print("\n".join(trainer.latents.broken_lines()))
        return final
