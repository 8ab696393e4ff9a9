"""Saving trained networks: file names, kohya/ModelSpec metadata, and keeping only the last N."""
from __future__ import annotations

import json
import time
from pathlib import Path

from library.lora.file_io import output_file_name
from library.lora.metadata import build_modelspec, build_training_metadata
from library.training.precision import save_dtype


def thumbnail_data_uri(path: str, max_side: int = 256) -> str:
    """ModelSpec's thumbnail: the image as a JPEG data URI, at most `max_side` pixels a side."""
    import base64
    import io

    from library.data.images import ImageSkipped, load_rgb
    from library.errors import UserError

    try:
        image = load_rgb(path)
    except ImageSkipped as error:
        raise UserError(f"{path}: metadata_thumbnail cannot be read ({error})") from None
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class NetworkSaver:
    def __init__(self, args, dataset_summary: dict, run_started: float):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.summary = dataset_summary
        self.run_started = run_started
        self.extension = ".safetensors" if args.save_model_as == "safetensors" else f".{args.save_model_as}"
        self.thumbnail = thumbnail_data_uri(args.metadata_thumbnail) if args.metadata_thumbnail else None
        self.extra_metadata = None  # optional callable(path) -> dict, e.g. pivotal tuning's tokens and trigger phrase

    def metadata(self, epoch: int, step: int, optimizer_name: str) -> dict[str, str]:
        args = self.args
        resolution = self.summary["resolution"]
        network_args = dict(item.split("=", 1) for item in (args.network_args or []))
        title = args.metadata_title or args.output_name
        spec = build_modelspec(
            title=title, resolution=resolution, trigger_phrase=args.metadata_trigger_phrase,
            description=args.metadata_description, author=args.metadata_author, license=args.metadata_license,
            tags=args.metadata_tags, usage_hint=args.metadata_usage_hint, merged_from=args.metadata_merged_from,
            preprocessor=args.metadata_preprocessor, is_negative_embedding=args.metadata_is_negative_embedding,
        )
        if args.metadata_thumbnail:
            spec["modelspec.thumbnail"] = self.thumbnail
        minimal = {
            "ss_network_module": args.network_module,
            "ss_network_dim": str(args.network_dim),
            "ss_network_alpha": str(args.network_alpha),
            "ss_network_args": json.dumps(network_args),
            "ss_base_model_version": "sdxl_base_v1-0",
        }
        if args.no_metadata:
            return {**minimal, **spec}
        training = build_training_metadata(
            network_module=args.network_module, network_dim=args.network_dim, network_alpha=args.network_alpha,
            network_args=network_args, output_name=args.output_name, learning_rate=args.learning_rate,
            unet_lr=args.unet_lr, text_encoder_lr=args.text_encoder_lr, optimizer=optimizer_name, steps=step,
            epoch=epoch, num_train_images=self.summary["num_train_images"], resolution=resolution, seed=args.seed,
            tag_frequency=self.summary["tag_frequency"], training_comment=args.training_comment,
            extra={
                "ss_training_started_at": self.run_started,
                "ss_num_reg_images": self.summary["num_reg_images"],
                "ss_num_batches_per_epoch": self.summary["batches_per_epoch"],
                "ss_batch_size_per_device": args.train_batch_size,
                "ss_total_batch_size": self.summary["total_batch_size"],
                "ss_gradient_accumulation_steps": args.gradient_accumulation_steps,
                "ss_max_train_steps": self.summary["max_train_steps"],
                "ss_lr_warmup_steps": args.lr_warmup_steps,
                "ss_lr_scheduler": args.lr_scheduler,
                "ss_mixed_precision": args.mixed_precision,
                "ss_full_fp16": args.full_fp16,
                "ss_gradient_checkpointing": args.gradient_checkpointing,
                "ss_cache_latents": args.cache_latents or args.cache_latents_to_disk,
                "ss_caption_dropout_rate": args.caption_dropout_rate,
                "ss_shuffle_caption": args.shuffle_caption,
                "ss_keep_tokens": args.keep_tokens,
                "ss_noise_offset": args.noise_offset,
                "ss_multires_noise_iterations": args.multires_noise_iterations,
                "ss_min_snr_gamma": args.min_snr_gamma,
                "ss_loss_type": args.loss_type,
                "ss_max_grad_norm": args.max_grad_norm,
                "ss_prior_loss_weight": args.prior_loss_weight,
                "ss_max_token_length": args.max_token_length,
                "ss_sd_model_name": Path(args.pretrained_model_name_or_path).name,
                "ss_vae_name": Path(args.vae).name if args.vae else None,
                "ss_training_finished_at": time.time(),
                "ss_dataset_dirs": json.dumps(self.summary["dataset_dirs"]),
            },
        )
        return {**training, **spec}

    def save(self, network, epoch: int, step: int, optimizer_name: str, kind: str) -> Path:
        """kind: "epoch" (-000001), "step" (-step00000500) or "final"."""
        name = output_file_name(
            self.args.output_name,
            epoch=epoch if kind == "epoch" else None,
            step=step if kind == "step" else None,
            ext=self.extension,
        )
        path = self.output_dir / name
        metadata = self.metadata(epoch, step, optimizer_name)
        if self.extra_metadata is not None:
            metadata.update(self.extra_metadata(path))
        network.save_weights(str(path), save_dtype(self.args.save_precision), metadata)
        return path

    def remove_old(self, epoch: int | None = None, step: int | None = None) -> None:
        """save_last_n_epochs / save_last_n_steps: delete the save that fell out of the window."""
        args = self.args
        if epoch is not None and args.save_last_n_epochs and args.save_every_n_epochs:
            old = epoch - args.save_every_n_epochs * args.save_last_n_epochs
            if old > 0:
                (self.output_dir / output_file_name(args.output_name, epoch=old, ext=self.extension)).unlink(missing_ok=True)
        if step is not None and args.save_last_n_steps and args.save_every_n_steps:
            threshold = step - args.save_last_n_steps
            for file in self.output_dir.glob(f"{args.output_name}-step*{self.extension}"):
                digits = file.stem[len(args.output_name) + len("-step"):]
                if digits.isdigit() and int(digits) < threshold:
                    file.unlink(missing_ok=True)
