"""Sample images during training with the in-training components (LoRA active), through the one
sampling stack (library/generation/sampling.py), without disturbing the training's random state.

Files: output_dir/sample/<output_name>_<e000001|000500>_<prompt index>_<seed>.png.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

from library.file_io import atomic_path
from library.generation.sampling import Settings, generate


def sample_file_name(output_name: str, epoch: int | None, step: int, index: int, seed: int) -> str:
    counter = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
    return f"{output_name}_{counter}_{index:02d}_{seed}.png"


def prompt_settings(prompt, default_size: tuple[int, int], default_sampler: str, max_token_length,
                    v_parameterization: bool) -> Settings:
    """A SamplePrompt's own size, steps, scale and sampler, else the run's defaults."""
    width, height = prompt.width or default_size[0], prompt.height or default_size[1]
    return Settings(width=max(64, width - width % 8), height=max(64, height - height % 8), steps=prompt.sample_steps,
                    guidance=prompt.scale, sampler=prompt.sample_sampler or default_sampler,
                    max_token_length=max_token_length, v_parameterization=v_parameterization)


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
        text, negative = prompt.prompt, prompt.negative_prompt
        if prompt_transform is not None:
            text, negative = prompt_transform(text), prompt_transform(negative)
        settings = prompt_settings(prompt, default_size, default_sampler, max_token_length, v_parameterization)
        image = generate(model, text, negative, seed, settings, autocast)
        path = folder / sample_file_name(output_name, epoch, step, index, seed)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG")
        written.append((path, image))
    model.unet.train(was_training)
    return written
