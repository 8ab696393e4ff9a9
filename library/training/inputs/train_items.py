"""Training samples: which images, with which caption, in which bucket, repeated how often.

Builds `TrainItem`s from dataset specs (DreamBooth folders, fine-tune metadata JSON, dataset TOML
subsets). When a folder yields no images, the error says which folder was searched, what was found
there and what naming is expected; captions that exist only under another extension are reported.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from library.data.buckets import BucketManager, BucketPlacement, check_bucket_options, extreme_placements_notice, place_in_bucket
from library.data.captions import caption_path, read_caption, read_caption_lines
from library.data.image_info_cache import load_image_info, save_image_info
from library.data.images import IMAGE_EXTENSIONS, ImageSkipped, SkipLog, glob_images, read_image_size
from library.data.metadata import load_metadata
from library.errors import UserError
from library.data.caption_processing import caption_notices
from library.training.config.dataset_config import DatasetSpec, SubsetSpec


@dataclass
class TrainItem:
    image_path: Path
    caption: str
    subset: SubsetSpec
    placement: BucketPlacement
    dataset_index: int = 0
    mask_path: Path | None = None  # conditioning_data_dir mask (condition_masks.py)
    tags: str | None = None  # fine-tune metadata's tags (kohya's tag frequency counts these)

    @property
    def is_reg(self) -> bool:
        return self.subset.is_reg

    @property
    def bucket(self) -> tuple[int, int]:
        return self.placement.bucket


def _bucket_manager(spec: DatasetSpec, notices: list) -> BucketManager | None:
    if not spec.enable_bucket:
        return None
    check_bucket_options(spec, notices)
    return BucketManager(spec.bucket_no_upscale, spec.resolution, spec.min_bucket_reso, spec.max_bucket_reso, spec.bucket_reso_steps)


def _place(spec: DatasetSpec, manager, size: tuple[int, int], train_resolution=None) -> BucketPlacement:
    if train_resolution is not None:  # meta_lat.json already chose the bucket
        return place_in_bucket(size[0], size[1], tuple(train_resolution))
    if manager is None:
        return place_in_bucket(size[0], size[1], tuple(spec.resolution))
    return manager.place(size[0], size[1])


def _other_caption_extensions(folder: Path, images: list[Path], wanted: str) -> Counter:
    stems = {p.stem for p in images}
    found = Counter()
    for file in folder.iterdir():
        if file.is_file() and file.stem in stems and file.suffix.lower() not in IMAGE_EXTENSIONS and file.suffix != wanted:
            if file.suffix in (".txt", ".caption", ".cap", ".tags"):
                found[file.suffix] += 1
    return found


def _no_images_error(folder: Path) -> UserError:
    if not folder.is_dir():
        return UserError(f"{folder}: image folder not found")
    entries = sorted(p.name for p in folder.iterdir())[:5]
    seen = f"found {', '.join(entries)}" if entries else "the folder is empty"
    return UserError(
        f"{folder}: no training images ({seen}); expected .png/.jpg/.jpeg/.webp/.bmp files directly in it"
        + (" (DreamBooth data goes in <repeats>_<class> sub-folders of train_data_dir)" if any((folder / e).is_dir() for e in entries) else "")
    )


def _examples(paths, limit: int = 3) -> str:
    names = [Path(p).name for p in paths[:limit]]
    return ", ".join(names) + (", ..." if len(paths) > limit else "")


def dreambooth_items(spec: DatasetSpec, subset: SubsetSpec, manager, skipped: SkipLog, notices: list) -> list[TrainItem]:
    folder = Path(subset.image_dir)
    images = glob_images(folder) if folder.is_dir() else []
    if not images:
        raise _no_images_error(folder)
    items, missing, empty = [], [], []
    cached = load_image_info(folder, images, subset.caption_extension) if subset.cache_info else None
    records = {}  # what cache_info writes
    for image in images:
        if cached is not None:  # kohya's cache_info: sizes and captions without opening the files
            size, caption = cached[image.name]
        else:
            try:
                size = read_image_size(image)
            except ImageSkipped as error:
                skipped.add(image, str(error))
                continue
            read = read_caption_lines if subset.enable_wildcard else read_caption
            caption = read(caption_path(image, subset.caption_extension))
            if caption is None or not caption.strip():  # no file, or an empty one: the class tokens stand in (kohya stops on an empty file)
                (missing if caption is None else empty).append(image)
                caption = subset.class_tokens or ""
            records[image] = (size, caption)
        try:
            placement = _place(spec, manager, size)
        except ValueError as error:
            skipped.add(image, str(error))
            continue
        items.append(TrainItem(image, caption, subset, placement))
    if subset.cache_info and cached is None:
        save_image_info(folder, records)
    if missing or empty:
        ext = subset.caption_extension
        others = _other_caption_extensions(folder, images, ext)
        hint = ""
        if others:
            other, count = others.most_common(1)[0]
            hint = f"; {count} {other} files are there: set caption_extension = \"{other}\""
        if items and not subset.class_tokens and not any(item.caption for item in items):
            # kohya trains such a folder on "" without a word; say it plainly (a notice: unconditional training is legitimate)
            notices.append(f"{folder}: none of its {len(images)} images has a caption (no {ext} files with text, and no class "
                           f"token in the folder name): every image trains on an empty caption"
                           f"{hint or f'; write {ext} files next to the images or name the folder <repeats>_<class tokens>'}")
            return items
        parts = []
        if missing:
            parts.append(f"{len(missing)} of {len(images)} images have no {ext} file ({_examples(missing)})")
        if empty:
            parts.append(f"{len(empty)} have an empty {ext} file ({_examples(empty)})")
        fallback = f"the class tokens '{subset.class_tokens}'" if subset.class_tokens else "an empty caption"
        notices.append(f"{folder}: {' and '.join(parts)}; using {fallback} for them{hint}")
    return items


def _find_image(folder: Path, key: str) -> Path | None:
    path = Path(key)
    if path.suffix.lower() in IMAGE_EXTENSIONS and path.exists():
        return path
    for base in (folder / key, path):
        for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
            candidate = base.with_name(base.name + ext)
            if candidate.exists():
                return candidate
    return None


def metadata_caption(entry: dict, separator: str = ",", wildcard: bool = False) -> str:
    """A fine-tune metadata entry's caption, its tags appended after `separator` (plus a space);
    with enable_wildcard the tags go on every line of a multi-line caption, as kohya does."""
    caption, tags = entry.get("caption"), entry.get("tags")
    if caption is None:
        return tags or ""
    if not tags:
        return caption
    joiner = f"{separator} "
    if wildcard:
        tags = tags.replace("\n", separator)
        return "\n".join(f"{line}{joiner}{tags}" for line in caption.split("\n") if line.strip())
    return f"{caption}{joiner}{tags}"


def metadata_items(spec: DatasetSpec, subset: SubsetSpec, manager, skipped: SkipLog, notices: list) -> list[TrainItem]:
    metadata = load_metadata(subset.metadata_file)
    folder = Path(subset.image_dir or ".")
    items, not_found, empty = [], [], []
    for key, entry in metadata.items():
        image = _find_image(folder, key)
        if image is None:
            not_found.append(key)
            continue
        caption = metadata_caption(entry, subset.caption_separator, subset.enable_wildcard)
        size = tuple(entry["image_size"]) if entry.get("image_size") else None
        try:
            size = size or read_image_size(image)
            placement = _place(spec, manager, size, entry.get("train_resolution"))
        except (ImageSkipped, ValueError) as error:
            skipped.add(image, str(error))
            continue
        if not caption.strip():
            empty.append(image)
        items.append(TrainItem(image, caption.strip(), subset, placement, tags=entry.get("tags")))
    if not items:
        raise UserError(f"{subset.metadata_file}: none of its {len(metadata)} entries matches an image in {folder} "
                        f"(e.g. {next(iter(metadata), '')!r}); check train_data_dir, or re-run finetune/merge_all_to_metadata.py "
                        "and prepare_buckets_latents.py on this machine")
    if len(empty) == len(items):
        raise UserError(
            f"{subset.metadata_file}: none of its {len(items)} images has a caption or tags; the metadata was probably made "
            "from a meta_clean.json whose keys are not this machine's image names (made on another machine, or --full_path "
            "in one step and not the other): re-run finetune/merge_all_to_metadata.py and prepare_buckets_latents.py on this "
            "machine, with --full_path in both or in neither"
        )
    if not_found or empty:
        parts = []
        if not_found:
            parts.append(f"{len(not_found)} entries have no image in {folder} ({_examples(not_found)})")
        if empty:
            parts.append(f"{len(empty)} images have an empty caption ({_examples(empty)})")
        notices.append(f"{subset.metadata_file}: {' and '.join(parts)}")
    return items


def build_items(specs: list[DatasetSpec], skipped: SkipLog, notices: list) -> list[TrainItem]:
    items = []
    for index, spec in enumerate(specs):
        manager = _bucket_manager(spec, notices)
        for subset in spec.subsets:
            make = metadata_items if subset.metadata_file else dreambooth_items
            made = make(spec, subset, manager, skipped, notices)
            for item in made:
                item.dataset_index = index
                items.append(item)
            extreme = extreme_placements_notice(subset.metadata_file or subset.image_dir,
                                                [(item.image_path.name, item.placement) for item in made])
            if extreme:
                notices.append(extreme)
    notices.extend(caption_notices(items))
    return items


def split_validation(items: list[TrainItem], fraction: float, seed: int) -> tuple[list[TrainItem], list[TrainItem]]:
    """(training items, validation items): a seeded, fixed share of the non-regularisation images."""
    if not fraction:
        return items, []
    if not 0 < fraction < 1:
        raise UserError(f"validation_split {fraction} must be between 0 and 1")
    import random

    candidates = [i for i, item in enumerate(items) if not item.is_reg]
    count = max(1, round(len(candidates) * fraction))
    if count >= len(candidates):
        raise UserError(f"validation_split {fraction} leaves no training images out of {len(candidates)}")
    held_out = set(random.Random(seed).sample(candidates, count))
    return [it for i, it in enumerate(items) if i not in held_out], [it for i, it in enumerate(items) if i in held_out]
