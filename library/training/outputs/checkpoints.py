"""The run's save points: the LoRA file (kind "epoch", "step" or "final") and, when asked, a
resumable state beside it, written by process 0 with every process's random state; old files and
states pruned as configured; a save that fails twice rescued to a fallback folder (save_rescue)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from library.training.outputs.save_rescue import save_or_rescue
from library.training.outputs.train_state import Progress, prune_states, save_state, state_folder_name
from library.training.parallel import distributed


@dataclass
class Checkpoints:
    accelerator: object
    saver: object  # NetworkSaver: file names, metadata, save_last_n_* of LoRA files
    network: object
    optimizer: object
    lr_scheduler: object
    scaler: object | None
    schedule_free: object  # files hold a schedule-free optimizer's averaged weights
    pivotal: object  # pivotal: the embeddings file next to the LoRA, its state in the run state
    latents: object  # LatentSource: the images found broken travel in the state
    output_dir: Path
    output_name: str
    keep_epoch_states: int | None
    keep_step_states: int | None
    every_n_epochs: int | None

    def save(self, kind: str, progress: Progress, with_state: bool, epoch: int | None = None) -> Path | None:
        """`progress` is the position training continues from; `epoch` numbers an epoch save."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        rng_states = distributed.gathered_rng_states(accelerator) if with_state else None  # every process's, to process 0
        path = None
        if accelerator.is_main_process:
            epoch_number, step_number = _numbers(kind, progress, epoch)
            path = save_or_rescue(lambda folder: self.write(folder, kind, progress, with_state, epoch, rng_states),
                                  self.output_dir, self.output_name)
            self.saver.remove_old(epoch=epoch_number, step=step_number)
            if with_state:
                prune_states(self.output_dir, self.output_name, self.keep_epoch_states, self.keep_step_states, epoch_number,
                             step_number, self.every_n_epochs)
        accelerator.wait_for_everyone()
        return path

    def write(self, folder: Path, kind: str, progress: Progress, with_state: bool, epoch: int | None,
              rng_states: list[dict] | None = None) -> Path:
        completed_epochs = epoch if epoch is not None else progress.epoch - (progress.batches_done_in_epoch == 0)
        with self.schedule_free.evaluating():  # schedule-free: files hold the averaged weights (states: train mode)
            path = self.saver.save(self.network, completed_epochs, progress.global_step, kind, folder)
            self.pivotal.save_embeddings(path)  # pivotal: <lora stem>_emb.safetensors next to the LoRA
        print(f"saved {path}")
        if with_state:
            epoch_number, step_number = _numbers(kind, progress, epoch)
            name = state_folder_name(self.output_name, epoch=epoch_number, step=step_number)
            state = save_state(folder / name, progress, self.network, self.optimizer, self.lr_scheduler, self.scaler,
                               extra={"pivotal": self.pivotal.state_dict(), "broken_images": self.latents.broken_state()},
                               rng_states=rng_states)
            print(f"saved state {state}")
        return path


def _numbers(kind: str, progress: Progress, epoch: int | None) -> tuple[int | None, int | None]:
    """(epoch, step) that name a save's files: the epoch of an epoch save, the step of a step save."""
    return (epoch if kind == "epoch" else None), (progress.global_step if kind == "step" else None)
