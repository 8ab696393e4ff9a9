"""Sample images during training with the in-training components (LoRA active), without
disturbing the training's random state.

kohya's sampler names map onto diffusers schedulers configured with SDXL's noise schedule.
Files: output_dir/sample/<output_name>_<e000001|000500>_<prompt index>_<seed>.png.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from library.errors import UserError
from library.file_io import atomic_path
from library.models.sdxl_architecture import SDXL_SCHEDULER_CONFIG
from library.models.sdxl_conditioning import encode_captions

_SAMPLERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}


def make_sampler(name: str, v_parameterization: bool = False):
    key = name.lower().removeprefix("k_")
    if key not in _SAMPLERS:
        raise UserError(f"sample_sampler {name!r} is unknown; use one of {', '.join(_SAMPLERS)} (k_ aliases too)")
    import diffusers

    class_name, extra = _SAMPLERS[key]
    config = {**SDXL_SCHEDULER_CONFIG, **extra, "prediction_type": "v_prediction" if v_parameterization else "epsilon"}
    return getattr(diffusers, class_name).from_config(config)


def sample_file_name(output_name: str, epoch: int | None, step: int, index: int, seed: int) -> str:
    counter = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{counter}_{index:02d}_{seed}.png"


@torch.no_grad()
def decode_to_image(pipe, latents: torch.Tensor):
    """VAE-decode sampled latents in the VAE's own dtype, outside autocast (fp32 with no_half_vae; the
    SDXL VAE overflows when its convolutions run in fp16). An fp16 VAE whose config asks for it
    (force_upcast) decodes in fp32 and goes back to fp16, as diffusers' pipeline does."""
    vae = pipe.vae
    dtype = next(vae.parameters()).dtype
    upcast = dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    with torch.autocast(latents.device.type, enabled=False):
        if upcast:
            vae.to(dtype=torch.float32)
        try:
            decoder_dtype = next(vae.post_quant_conv.parameters()).dtype if vae.post_quant_conv is not None else torch.float32
            pixels = vae.decode((latents / vae.config.scaling_factor).to(decoder_dtype)).sample
        finally:
            if upcast:
                vae.to(dtype=dtype)
    return pipe.image_processor.postprocess(pixels.float(), output_type="pil")[0]


@torch.no_grad()
def generate(model, prompt, default_size: tuple[int, int], default_sampler: str, max_token_length, v_parameterization=False,
             prompt_transform=None, seed: int = 0, autocast=contextlib.nullcontext):
    """One PIL image for a SamplePrompt; the global torch RNG state is left as it was. `autocast` is the
    context the text encoders and the UNet run in (half base weights with fp32 LoRA weights)."""
    from diffusers import StableDiffusionXLPipeline

    width = prompt.width or default_size[0]
    height = prompt.height or default_size[1]
    width, height = max(64, width - width % 8), max(64, height - height % 8)
    text, negative = prompt.prompt, prompt.negative_prompt
    if prompt_transform is not None:
        text, negative = prompt_transform(text), prompt_transform(negative)
    pipe = StableDiffusionXLPipeline(
        vae=model.vae, text_encoder=model.text_encoder1, text_encoder_2=model.text_encoder2,
        tokenizer=model.tokenizer1, tokenizer_2=model.tokenizer2, unet=model.unet,
        scheduler=make_sampler(prompt.sample_sampler or default_sampler, v_parameterization),
    )
    pipe.set_progress_bar_config(disable=True)
    rng_state = torch.get_rng_state()
    try:
        with autocast():
            context, pooled = encode_captions(model, [text, negative], max_token_length, weighted=True)  # (word:1.2) as in A1111
            generator = torch.Generator(device="cpu").manual_seed(seed)
            latents = pipe(
                prompt_embeds=context[:1], pooled_prompt_embeds=pooled[:1],
                negative_prompt_embeds=context[1:], negative_pooled_prompt_embeds=pooled[1:],
                width=width, height=height, num_inference_steps=prompt.sample_steps, guidance_scale=prompt.scale,
                generator=generator, output_type="latent",
            ).images
        image = decode_to_image(pipe, latents)
    finally:
        torch.set_rng_state(rng_state)
    return image


def write_samples(model, prompts, output_dir: Path, output_name: str, epoch: int | None, step: int, default_size,
                  default_sampler: str, max_token_length, v_parameterization=False, prompt_transform=None,
                  base_seed: int = 0, autocast=contextlib.nullcontext) -> list[tuple[Path, object]]:
    """Render every prompt; a prompt without --d gets base_seed + its index, so the same prompt is
    rendered from the same noise at every sampling point and the images show what training changed."""
    folder = Path(output_dir) / "sample"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    was_training = model.unet.training
    model.unet.eval()
    for index, prompt in enumerate(prompts):
        seed = prompt.seed if prompt.seed is not None else base_seed + index
        image = generate(model, prompt, default_size, default_sampler, max_token_length, v_parameterization, prompt_transform, seed,
                         autocast)
        path = folder / sample_file_name(output_name, epoch, step, index, seed)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        written.append((path, image))
    model.unet.train(was_training)
    return written
