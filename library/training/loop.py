"""The training run of sdxl_train_network.py, readable top to bottom.

    train(): checks before anything loads -> setup (library/training/run_setup.py) -> run
    run(): for each epoch, for each batch: loss (objective/batch_objective.py), backward, and every
    gradient_accumulation_steps batches an optimizer step; logs, samples, validation and saves at
    their cadence; a stop request or a non-finite loss saves a resumable state first.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from library.errors import UserError
from library.file_io import WriteFailed
from library.training.inputs.batch_plan import epoch_batches
from library.training.inputs.run_plan import dataset_summary, debug_dataset, epoch_seeds, plan_steps, print_dataset_summary
from library.training.objective import validation
from library.training.optim.lr_schedulers import lr_logs
from library.training.outputs import preflight
from library.training.outputs.run_control import RunStopped, StopRequest
from library.training.outputs.train_state import Progress, find_state, load_state, state_folder_name
from library.training.parallel import data_parallel, distributed
from library.training.run_setup import RunSetup
from library.training.sampling import write_samples


def train(resolved) -> Path | None:
    """Run a whole training from a resolved config; returns the final LoRA file (main process)."""
    trainer = Trainer(resolved)
    if resolved.args.debug_dataset:
        debug_dataset(trainer.items, trainer.specs, resolved.args.seed)
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


class Trainer(RunSetup):
    # -- the run, top to bottom -----------------------------------------------------------------
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
        final = self.checkpoints.save("final", progress, with_state=args.save_state or args.save_state_on_train_end)
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
        seeds = epoch_seeds(self.seed, batches, epoch)[rank::world]
        batches = batches[rank::world]
        pending, group_start = 0, progress.batches_done_in_epoch
        start = progress.batches_done_in_epoch
        prepared = self.pixel_loader.epoch(batches[start:], seeds[start:]) if self.pixel_loader else None  # loader workers
        for batch_index in range(progress.batches_done_in_epoch, len(batches)):
            will_step = pending + 1 >= args.gradient_accumulation_steps or batch_index == len(batches) - 1
            loss = self.objective.batch_loss(batches[batch_index], seeds[batch_index], epoch, progress.global_step, sync=will_step,
                                             pixels=next(prepared) if prepared else None)
            self.latents.share_broken(accelerator)  # every process takes the same stop decision
            if self.latents.too_many_broken():
                self.stop_with_state(progress, group_start, self.latents.too_many_error("; the last good state was saved"))
            empty = loss is None
            if empty:  # every image of the batch is broken: a zero gradient keeps the step plan (and all processes) in step
                loss = self.objective.zero_loss(sync=will_step)
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
                         "loss/average": sum(progress.recent_losses) / max(len(progress.recent_losses), 1),
                         **lr_logs(self.optimizer, self.group_names)})
            step = progress.global_step
            if self.val_items and self.due(args.validate_every_n_steps, step):
                logs["loss/validation/step_average"] = self.validation_loss()
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{logs['loss/average']:.4f}")
            bar.update(1)
            if self.stop_requested(stop):
                self.checkpoints.save("step", progress, with_state=True)
                return True
            if step < self.max_steps:
                if self.due(args.save_every_n_steps, step):
                    self.checkpoints.save("step", progress, with_state=args.save_state)
                if self.due(args.sample_every_n_steps, step):
                    self.sample(None, step)
            if step >= self.max_steps:
                break
        if progress.batches_done_in_epoch >= len(batches):  # not when the run ended inside the epoch
            self.finish_epoch(progress)
        return False

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
                self.checkpoints.save("epoch", progress, with_state=args.save_state, epoch=epoch)
            if self.due(args.sample_every_n_epochs, epoch):
                self.sample(epoch, progress.global_step)

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

    # -- one optimizer step and the cross-process decisions -------------------------------------
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

    def all_finite(self, value: float) -> bool:
        """Whether every process's loss is finite (each must take the same branch, or DDP hangs)."""
        return not distributed.any_process(self.accelerator, not math.isfinite(value))

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
        self.checkpoints.save("step", progress, with_state=True)
        raise error

    # -- saves, samples, validation, logs -------------------------------------------------------
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
