"""Saving trained networks: file names, kohya's ss_* metadata (run_metadata.py) with ModelSpec,
and keeping only the last N."""
from __future__ import annotations

import time
from pathlib import Path

from library.lora.file_io import output_file_name
from library.lora.metadata import build_modelspec
from library.lora.file_io import save_dtype

# kohya's SS_METADATA_MINIMUM_KEYS: all that no_metadata keeps (enough for UIs to load the file)
MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args")


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
    def __init__(self, args, dataset_summary: dict, run_started: float, every_n_epochs: int | None = None):
        """`every_n_epochs`: the epoch save cadence in force (save_n_epoch_ratio's, when given)."""
        self.args = args
        self.every_n_epochs = every_n_epochs if every_n_epochs is not None else args.save_every_n_epochs
        self.output_dir = Path(args.output_dir)
        self.summary = dataset_summary
        self.run_started = run_started
        self.extension = ".safetensors" if args.save_model_as == "safetensors" else f".{args.save_model_as}"
        self.thumbnail = thumbnail_data_uri(args.metadata_thumbnail) if args.metadata_thumbnail else None
        self.extra_metadata = None  # optional callable(path) -> dict, e.g. pivotal tuning's tokens and trigger phrase
        self.run_metadata: dict[str, str] = {}  # kohya's ss_* keys, set by describe_run

    def describe_run(self, *, items, val_items, specs, optimizer, batches_per_epoch: int, epochs: int, seed: int | None = None) -> None:
        """Compute kohya's ss_* keys of this run once (library/training/outputs/run_metadata.py), before training."""
        from library.training.outputs.run_metadata import kohya_run_metadata

        self.run_metadata = kohya_run_metadata(
            self.args, items=items, val_items=val_items, specs=specs, optimizer=optimizer,
            batches_per_epoch=batches_per_epoch, max_steps=self.summary["max_train_steps"], epochs=epochs,
            total_batch_size=self.summary["total_batch_size"], started_at=self.run_started, seed=seed)

    def metadata(self, epoch: int, step: int) -> dict[str, str]:
        """kohya's ss_* keys (only its minimal set with no_metadata) plus ModelSpec 1.0.1."""
        args = self.args
        resolution = self.summary["resolution"]
        spec = build_modelspec(
            title=args.metadata_title or args.output_name, resolution=resolution, trigger_phrase=args.metadata_trigger_phrase,
            description=args.metadata_description, author=args.metadata_author, license=args.metadata_license,
            tags=args.metadata_tags, usage_hint=args.metadata_usage_hint, merged_from=args.metadata_merged_from,
            preprocessor=args.metadata_preprocessor, is_negative_embedding=args.metadata_is_negative_embedding,
        )
        if args.metadata_thumbnail:
            spec["modelspec.thumbnail"] = self.thumbnail
        metadata = {**self.run_metadata, "ss_training_finished_at": str(time.time()), "ss_steps": str(step), "ss_epoch": str(epoch)}
        if args.no_metadata:  # kohya's SS_METADATA_MINIMUM_KEYS
            metadata = {k: v for k, v in metadata.items() if k in MINIMUM_KEYS}
        return {**metadata, **spec}

    def save(self, network, epoch: int, step: int, kind: str, folder: Path | None = None) -> Path:
        """kind: "epoch" (-000001), "step" (-step00000500) or "final"; into `folder` (default output_dir)."""
        name = output_file_name(
            self.args.output_name,
            epoch=epoch if kind == "epoch" else None,
            step=step if kind == "step" else None,
            ext=self.extension,
        )
        path = Path(folder or self.output_dir) / name
        metadata = self.metadata(epoch, step)
        if self.extra_metadata is not None:
            metadata.update(self.extra_metadata(path))
        network.save_weights(str(path), save_dtype(self.args.save_precision), metadata)
        return path

    def remove_old(self, epoch: int | None = None, step: int | None = None) -> None:
        """save_last_n_epochs / save_last_n_steps: delete the save that fell out of the window."""
        args = self.args
        if epoch is not None and args.save_last_n_epochs and self.every_n_epochs:
            old = epoch - self.every_n_epochs * args.save_last_n_epochs
            if old > 0:
                (self.output_dir / output_file_name(args.output_name, epoch=old, ext=self.extension)).unlink(missing_ok=True)
        if step is not None and args.save_last_n_steps and args.save_every_n_steps:
            threshold = step - args.save_last_n_steps
            for file in self.output_dir.glob(f"{args.output_name}-step*{self.extension}"):
                digits = file.stem[len(args.output_name) + len("-step"):]
                if digits.isdigit() and int(digits) < threshold:
                    file.unlink(missing_ok=True)
