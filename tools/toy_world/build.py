"""Building a toy world folder: the images, world.json, and the base model pretrained on the images.

    DIR/world.json                  what the world is (trigger, colours, base prompts)
    DIR/images/1_<caption>/*.png    the base data set the model was trained on (40 per caption)
    DIR/concept/10_zkz/*.png        the held-out concept, a DreamBooth folder (class token = caption)
    DIR/reg/1_<caption>/*.png       regularisation images (4 per base caption) for prior preservation
    DIR/toy_sdxl.safetensors        the base model, single-file layout
    DIR/diffusers/                  the same model, diffusers layout
    DIR/build.json                  the settings fingerprint and what the build measured

Re-running reuses a finished model whose fingerprint (settings + world + BUILD_VERSION) matches;
the cheap parts (world.json, images, a missing diffusers copy) are rewritten when missing.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from library.file_io import atomic_path, write_json_atomic
from tools.toy_world import world
from tools.toy_world.model import toy_components
from tools.toy_world.unet_training import UNetTraining

BUILD_VERSION = 3  # bump when the build's code changes what it produces
MODEL_FILE = "toy_sdxl.safetensors"
VAE_SCALE = 0.13025  # the trainer's and the sampler's latent scale factor (SDXL's)


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    images_per_caption: int = 40
    concept_images: int = 12
    concept_repeats: int = 10
    reg_per_caption: int = 4
    unet: UNetTraining = field(default_factory=UNetTraining)

    def fingerprint(self) -> str:
        payload = {"settings": asdict(self), "world": world.description(), "resolution": world.RESOLUTION,
                   "version": BUILD_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def concept_folder(output_dir, settings: BuildSettings = BuildSettings()) -> Path:
    return Path(output_dir) / "concept" / f"{settings.concept_repeats}_{world.TRIGGER}"


def _save_images(folder: Path, images, stem: str) -> None:
    """PNG files `<stem>_NN.png`; existing files are kept (the images are a pure function of the seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        path = folder / f"{stem}_{index:02d}.png"
        if not path.exists():
            with atomic_path(path) as temporary:
                image.save(temporary, format="PNG")


def _by_caption(samples) -> dict[str, list]:
    groups: dict[str, list] = {}
    for image, caption in samples:
        groups.setdefault(caption, []).append(image)
    return groups


def base_images(settings: BuildSettings) -> list:
    """The (image, caption) pairs the base model is trained on."""
    count = len(world.PALETTE) * len(world.SHAPES) * settings.images_per_caption
    return list(world.base_samples(count, settings.seed + 3))


def write_images(output_dir: Path, settings: BuildSettings, samples) -> None:
    """images/ (the base data set), concept/ and reg/, each a DreamBooth folder tree."""
    for caption, images in _by_caption(samples).items():
        _save_images(output_dir / "images" / f"1_{caption}", images, caption.replace(" ", "_"))
    _save_images(concept_folder(output_dir, settings), world.concept_samples(settings.concept_images, settings.seed + 7),
                 world.TRIGGER)
    reg = world.base_samples(len(world.PALETTE) * len(world.SHAPES) * settings.reg_per_caption, settings.seed + 11)
    for caption, images in _by_caption(reg).items():
        _save_images(output_dir / "reg" / f"1_{caption}", images, caption.replace(" ", "_"))


def _pixels(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def _encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i : i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])


@torch.no_grad()
def standardise_latents(vae, latents: torch.Tensor) -> None:
    """Rescale the VAE's latent space (exactly: quant_conv scales, post_quant_conv undoes it) so that
    latents x VAE_SCALE have zero mean and unit variance per channel over the world's images."""
    mean, std = latents.mean(dim=(0, 2, 3)), latents.std(dim=(0, 2, 3))
    k = 1.0 / (std * VAE_SCALE)
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight.data[:4] *= k.view(4, 1, 1, 1)
    quant.bias.data[:4] = (quant.bias.data[:4] - mean) * k
    post.bias.data += post.weight.data[:, :, 0, 0] @ mean
    post.weight.data /= k.view(1, 4, 1, 1)


def _model_parts(components, tokenizers):
    from types import SimpleNamespace

    unet, te1, te2, vae = components
    return SimpleNamespace(unet=unet, text_encoder1=te1, text_encoder2=te2, vae=vae, tokenizers=list(tokenizers),
                           tokenizer1=tokenizers[0], tokenizer2=tokenizers[1])


def train_base_model(settings: BuildSettings, samples, log=print, progress: bool = True):
    """(unet, te1, te2, vae, report) of a base model trained on `samples` ((image, caption) pairs)."""
    from library.models.tokenizers import packaged_clip_tokenizers
    from tools.toy_world.unet_training import caption_table, train_unet
    from tools.toy_world.vae_init import build_vae

    seconds = {}
    start = time.perf_counter()
    unet, te1, te2, vae = toy_components(settings.seed)  # text encoders stay as initialised: frozen, random
    build_vae(vae, [*world.PALETTE.values(), world.CONCEPT_COLOUR], world.BACKGROUND)
    pixels = _pixels(image for image, _ in samples)
    standardise_latents(vae, _encode(vae, pixels))
    latents = _encode(vae, pixels) * VAE_SCALE
    with torch.no_grad():
        reconstruction = float((vae.decode(latents[:64] / VAE_SCALE).sample - pixels[:64]).abs().mean() * 127.5)
    captions = sorted({caption for _, caption in samples})
    caption_ids = torch.tensor([captions.index(caption) for _, caption in samples])
    parts = _model_parts((unet, te1, te2, vae), packaged_clip_tokenizers())
    contexts, pooled = caption_table(parts, captions + [""])
    seconds["data_and_vae"] = round(time.perf_counter() - start, 1)
    log(f"VAE: {len(samples)} world images, reconstruction error {reconstruction:.1f}/255 per pixel")
    start = time.perf_counter()
    ema, losses = train_unet(unet, latents, caption_ids, contexts, pooled, world.RESOLUTION, settings.unet,
                             empty_index=len(captions), progress=progress)
    seconds["unet"] = round(time.perf_counter() - start, 1)
    chunk = max(1, len(losses) // 10)
    report = {"seconds": seconds, "vae_reconstruction_error": round(reconstruction, 2),
              "unet_loss": [round(float(np.mean(losses[i : i + chunk])), 4) for i in range(0, len(losses), chunk)]}
    return ema, te1, te2, vae, report


def _write_model(output_dir: Path, parts, settings: BuildSettings) -> None:
    from library.models.sdxl_single_file import save_single_file
    from library.models.tokenizers import packaged_clip_tokenizers

    unet, te1, te2, vae = parts
    save_single_file(output_dir / MODEL_FILE, unet, te1, te2, vae,
                     metadata={"modelspec.title": "toy world SDXL (tiny architecture)",
                               "toy_world.fingerprint": settings.fingerprint()})
    _write_diffusers(output_dir, (unet, te1, te2, vae), packaged_clip_tokenizers())


def _write_diffusers(output_dir: Path, parts, tokenizers) -> None:
    from library.models.sdxl_diffusers import save_diffusers_folder

    target, temporary = output_dir / "diffusers", output_dir / ".diffusers.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    save_diffusers_folder(temporary, *parts, tokenizers)
    shutil.rmtree(target, ignore_errors=True)
    temporary.rename(target)


def _finished(output_dir: Path, settings: BuildSettings) -> dict | None:
    """build.json's content when the model there was built with these settings."""
    stamp = output_dir / "build.json"
    if not (output_dir / MODEL_FILE).is_file() or not stamp.is_file():
        return None
    try:
        report = json.loads(stamp.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if report.get("fingerprint") == settings.fingerprint() else None


def build_world(output_dir, settings: BuildSettings = BuildSettings(), log=print, progress: bool = True) -> dict:
    """Build (or reuse) the toy world in `output_dir`; returns build.json's content."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "world.json", world.description())
    samples = base_images(settings)
    write_images(output_dir, settings, samples)
    log(f"images: {len(samples)} in {output_dir / 'images'}, {settings.concept_images} of the concept "
        f"'{world.TRIGGER}' in {concept_folder(output_dir, settings)}, regularisation images in {output_dir / 'reg'}")
    stamp = _finished(output_dir, settings)
    if stamp is not None:
        if not (output_dir / "diffusers" / "model_index.json").is_file():
            from library.models.sdxl_loader import load_sdxl

            model = load_sdxl(output_dir / MODEL_FILE)
            _write_diffusers(output_dir, (model.unet, model.text_encoder1, model.text_encoder2, model.vae), model.tokenizers)
            log(f"rewrote {output_dir / 'diffusers'} from {MODEL_FILE}")
        log(f"reusing the base model in {output_dir} (fingerprint {settings.fingerprint()})")
        return stamp
    start = time.perf_counter()
    unet, te1, te2, vae, report = train_base_model(settings, samples, log, progress)
    _write_model(output_dir, (unet, te1, te2, vae), settings)
    report = {"fingerprint": settings.fingerprint(), "settings": asdict(settings), "threads": torch.get_num_threads(),
              "total_seconds": round(time.perf_counter() - start, 1), **report}
    write_json_atomic(output_dir / "build.json", report)
    log(f"base model: {output_dir / MODEL_FILE} and {output_dir / 'diffusers'} ({report['total_seconds']:.0f} s)")
    return report
