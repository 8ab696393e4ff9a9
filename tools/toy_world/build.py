"""Building a toy world folder: world.json, concept/, the pretrained base model in both layouts.

    DIR/world.json              what the world is (trigger, colours, base prompts)
    DIR/concept/10_zkz/*.png    the held-out concept, a DreamBooth folder (class token = caption)
    DIR/toy_sdxl.safetensors    the base model, single-file layout
    DIR/diffusers/              the same model, diffusers layout
    DIR/build.json              the settings fingerprint and what the build measured

Re-running reuses a finished model whose fingerprint (settings + world + BUILD_VERSION) matches;
the cheap parts (world.json, concept images, a missing diffusers copy) are rewritten when missing.
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

from library.file_io import write_json_atomic
from tools.toy_world import world
from tools.toy_world.model import toy_components
from tools.toy_world.unet_training import UNetTraining

BUILD_VERSION = 2  # bump when the build's code changes what it produces
MODEL_FILE = "toy_sdxl.safetensors"
VAE_SCALE = 0.13025  # the trainer's and the sampler's latent scale factor (SDXL's)


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    images_per_caption: int = 40
    concept_images: int = 12
    concept_repeats: int = 10
    unet: UNetTraining = field(default_factory=UNetTraining)

    def fingerprint(self) -> str:
        payload = {"settings": asdict(self), "world": world.description(), "resolution": world.RESOLUTION,
                   "version": BUILD_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def concept_folder(output_dir: Path, settings: BuildSettings) -> Path:
    return Path(output_dir) / "concept" / f"{settings.concept_repeats}_{world.TRIGGER}"


def write_concept(output_dir: Path, settings: BuildSettings) -> Path:
    folder = concept_folder(output_dir, settings)
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(world.concept_samples(settings.concept_images, settings.seed + 7)):
        path = folder / f"{world.TRIGGER}_{index:02d}.png"
        if not path.exists():
            image.save(path)
    return folder


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


def train_base_model(settings: BuildSettings, log=print, progress: bool = True):
    """(unet, te1, te2, vae, report) of a base model trained on the world."""
    from library.models.tokenizers import packaged_clip_tokenizers
    from tools.toy_world.unet_training import caption_table, train_unet
    from tools.toy_world.vae_init import build_vae

    seconds = {}
    start = time.perf_counter()
    unet, te1, te2, vae = toy_components(settings.seed)  # text encoders stay as initialised: frozen, random
    build_vae(vae, [*world.PALETTE.values(), world.CONCEPT_COLOUR], world.BACKGROUND)
    samples = list(world.base_samples(len(world.PALETTE) * len(world.SHAPES) * settings.images_per_caption, settings.seed + 3))
    pixels = _pixels(image for image, _ in samples)
    standardise_latents(vae, _encode(vae, pixels))
    latents = _encode(vae, pixels) * VAE_SCALE
    with torch.no_grad():
        reconstruction = float((vae.decode(latents[:64] / VAE_SCALE).sample - pixels[:64]).abs().mean() * 127.5)
    captions = sorted({caption for _, caption in samples})
    caption_ids = torch.tensor([captions.index(caption) for _, caption in samples])
    parts = _model_parts((unet, te1, te2, vae), packaged_clip_tokenizers())
    contexts, pooled = caption_table(parts, captions + [""])
    seconds["data_and_vae"] = time.perf_counter() - start
    log(f"VAE: {len(samples)} world images, reconstruction error {reconstruction:.1f}/255 per pixel")
    start = time.perf_counter()
    ema, losses = train_unet(unet, latents, caption_ids, contexts, pooled, world.RESOLUTION, settings.unet,
                             empty_index=len(captions), progress=progress)
    seconds["unet"] = time.perf_counter() - start
    chunk = max(1, len(losses) // 10)
    report = {"seconds": seconds, "vae_reconstruction_error": reconstruction,
              "unet_loss": [round(float(np.mean(losses[i : i + chunk])), 4) for i in range(0, len(losses), chunk)]}
    return ema, te1, te2, vae, report


def _write_model(output_dir: Path, parts, settings: BuildSettings) -> None:
    from library.models.sdxl_diffusers import save_diffusers_folder
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


def _finished(output_dir: Path, settings: BuildSettings) -> bool:
    stamp = output_dir / "build.json"
    if not (output_dir / MODEL_FILE).is_file() or not stamp.is_file():
        return False
    try:
        return json.loads(stamp.read_text(encoding="utf-8")).get("fingerprint") == settings.fingerprint()
    except (OSError, ValueError):
        return False


def build_world(output_dir, settings: BuildSettings = BuildSettings(), log=print, progress: bool = True) -> dict:
    """Build (or reuse) the toy world in `output_dir`; returns build.json's content."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "world.json", world.description())
    concept = write_concept(output_dir, settings)
    log(f"concept: {settings.concept_images} images of '{world.TRIGGER}' in {concept}")
    if _finished(output_dir, settings):
        stamp = json.loads((output_dir / "build.json").read_text(encoding="utf-8"))
        if not (output_dir / "diffusers" / "model_index.json").is_file():
            from library.models.sdxl_loader import load_sdxl

            model = load_sdxl(output_dir / MODEL_FILE)
            _write_diffusers(output_dir, (model.unet, model.text_encoder1, model.text_encoder2, model.vae), model.tokenizers)
            log(f"rewrote {output_dir / 'diffusers'} from {MODEL_FILE}")
        log(f"reusing the base model in {output_dir} (fingerprint {settings.fingerprint()})")
        return stamp
    start = time.perf_counter()
    unet, te1, te2, vae, report = train_base_model(settings, log, progress)
    _write_model(output_dir, (unet, te1, te2, vae), settings)
    report = {"fingerprint": settings.fingerprint(), "settings": asdict(settings), "threads": torch.get_num_threads(),
              "total_seconds": round(time.perf_counter() - start, 1), **report}
    write_json_atomic(output_dir / "build.json", report)
    log(f"base model: {output_dir / MODEL_FILE} and {output_dir / 'diffusers'} ({report['total_seconds']:.0f} s)")
    return report
