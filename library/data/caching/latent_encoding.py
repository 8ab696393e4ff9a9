"""Turning bucket-sized images into VAE latents (the only place the VAE runs during caching).

Latents are a posterior *sample* (DESIGN.md 4.3), drawn per image from a generator seeded by the
image's content hash: the result does not depend on batch composition and a re-encode of the
same image gives the same numbers.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from library.errors import UserError

def pixels_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> float32 [b, 3, h, w] in [-1, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).div(127.5).sub(1.0)


def seed_from_sha(sha256_hex: str, flipped: bool = False) -> int:
    return (int(sha256_hex[:15], 16) << 1) | int(flipped)


@torch.no_grad()
def encode_latents(vae, images: list[Image.Image], seeds: list[int] | None) -> np.ndarray:
    """[b, 4, h/8, w/8] float32 unscaled latents; the posterior mean when `seeds` is None."""
    parameter = next(vae.parameters())
    pixels = pixels_to_tensor(images).to(parameter.device, parameter.dtype)
    posterior = vae.encode(pixels).latent_dist
    mean, std = posterior.mean.float(), posterior.std.float()
    if seeds is None:
        return mean.cpu().numpy()
    noise = torch.stack(
        [torch.randn(mean.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=torch.float32) for seed in seeds]
    ).to(mean.device)
    return (mean + std * noise).cpu().numpy()


def check_finite(latents: np.ndarray, image_path: Path, dtype_name: str) -> None:
    if not np.isfinite(latents).all():
        remedy = (
            "encode in fp32 (--mixed_precision no) or use an fp16-safe VAE such as madebyollin/sdxl-vae-fp16-fix via --vae"
            if dtype_name in ("fp16", "bf16")
            else "check the VAE weights (--vae) and that the image is not corrupt"
        )
        raise UserError(f"{image_path}: the VAE produced NaN/inf latents; {remedy}")


def vae_fingerprint(vae, dtype_name: str = "fp32") -> str:
    """Hash of the VAE's weights and the encoding dtype: a different VAE means stale caches."""
    digest = hashlib.sha256(f"dtype={dtype_name};".encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        data = tensor.detach().to("cpu").contiguous()
        if data.dtype == torch.bfloat16:
            data = data.view(torch.int16)
        digest.update(memoryview(data.numpy()).cast("B"))
    return digest.hexdigest()[:32]


def load_vae_for_caching(model: str | os.PathLike, vae: str | os.PathLike | None, dtype: torch.dtype, device: str):
    """Only the VAE: from --vae, from a diffusers folder's vae/, or the first_stage_model.* tensors of a
    single-file checkpoint (read lazily, so the UNet and text encoders are never loaded)."""
    from library.models import sdxl_architecture as arch
    from library.models.checkpoint_file import PICKLE_SUFFIXES, read_shapes
    from library.models.sdxl_loader import load_vae
    from library.models.sdxl_single_file import vae_from_ldm_state_dict

    source = Path(vae or model)
    if not source.exists():
        option = "--vae" if vae else "model (pretrained_model_name_or_path)"
        raise UserError(f"{source}: {option} not found; give a local SDXL .safetensors file or diffusers folder")
    if source.is_dir() or source.suffix.lower() in PICKLE_SUFFIXES:
        model_vae = load_vae(source, torch.float32)
    else:
        from safetensors import safe_open

        shapes = read_shapes(source)
        keys = [k for k in shapes if k.startswith(arch.VAE_PREFIX)]
        if not keys and any(k.startswith(arch.UNET_PREFIX) for k in shapes):
            raise UserError(f"{source}: checkpoint has no VAE (first_stage_model.*); pass one with --vae")
        keys = keys or list(shapes)  # a VAE-only file
        from library.models.checkpoint_file import safetensors_errors

        with safetensors_errors(source), safe_open(str(source), framework="pt", device="cpu") as handle:
            state = {k: handle.get_tensor(k) for k in keys}
        model_vae = vae_from_ldm_state_dict(state, source, torch.float32)
    # one move, no fp32 copy on the device (naming fp32 again would only make diffusers warn)
    model_vae = model_vae.to(device, None if dtype == torch.float32 else dtype)
    return model_vae.eval().requires_grad_(False)
