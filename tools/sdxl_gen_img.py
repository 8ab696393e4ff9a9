"""Generate images with an SDXL model, LoRAs and pivotal embeddings; or one labelled comparison grid.

Images:
    python tools/sdxl_gen_img.py --ckpt base.safetensors --outdir out --prompt "photo of mychar, smiling" \\
        --network_weights mychar.safetensors --network_mul 0.8 --textual_inversion_embeddings mychar_emb.safetensors \\
        --W 1024 --H 1024 --steps 30 --scale 7 --seed 42 --images_per_prompt 2
  Prompts may carry A1111 tags: "photo of mychar <lora:style:0.6> <lora:detail:1:lbw=XL_OUTALL>"; a tag's
  file is <name>.safetensors in --network_dir (default: the folders of --network_weights). Tagged LoRAs
  come on top of --network_weights. --network_lbw gives block weights (preset or 12/20 values) per
  --network_weights file. --network_merge merges the command-line LoRAs once (less memory; per-prompt tags
  and grids then cannot change their weights). Embeddings are called by their file stem, as in A1111.

Grid (one PNG, LoRA weight across, prompts / seeds / base models down):
    python tools/sdxl_gen_img.py --ckpt base.safetensors --network_weights mychar.safetensors \\
        --grid_weights 0,0.2,0.4,0.6,0.8,1.0 --grid_y seed --grid_seeds 1 2 3 --prompt "photo of mychar" \\
        --grid_file compare.png
  A column's weight multiplies every LoRA's own weight (--network_mul and tag weights), so the 0 column
  is the base model. --grid_y prompt uses every --prompt / --from_file line; --grid_y model uses
  --grid_models instead of --ckpt.

Images are written atomically as PNG with the generation parameters in a "parameters" text chunk.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--ckpt", help="SDXL checkpoint (.safetensors) or diffusers folder")
    model.add_argument("--vae", default=None, help="VAE to use instead of the model's own")
    model.add_argument("--precision", choices=["float", "fp16", "bf16"], default="float",
                       help="model dtype (all three run on a CPU too; half precision is fast there only with AVX-512 BF16/FP16 or AMX)")
    model.add_argument("--device", default="cpu", help="cpu or cuda")
    prompt = parser.add_argument_group("prompts")
    prompt.add_argument("--prompt", action="append", default=None, help="prompt (repeatable)")
    prompt.add_argument("--from_file", default=None, help="text file with one prompt per line")
    prompt.add_argument("--negative_prompt", default="", help="negative prompt for every image")
    prompt.add_argument("--max_token_length", type=int, choices=[75, 150, 225], default=None,
                        help="prompt length in tokens (75-token chunks, as in training)")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--outdir", default="outputs", help="folder for images (default: outputs)")
    gen.add_argument("--W", type=int, default=1024, help="width (multiple of 8)")
    gen.add_argument("--H", type=int, default=1024, help="height (multiple of 8)")
    gen.add_argument("--steps", type=int, default=30, help="sampling steps")
    gen.add_argument("--scale", type=float, default=7.0, help="classifier-free guidance scale")
    gen.add_argument("--sampler", default="euler_a", help="ddim, pndm, lms, euler, euler_a, heun, dpm_2, dpm_2_a, dpmsolver, dpmsolver++, dpmsingle (k_ aliases too), as in training samples")
    gen.add_argument("--v_parameterization", action="store_true", help="the model predicts v (a v-prediction fine-tune)")
    gen.add_argument("--seed", type=int, default=None, help="seed of the first image (next images: +1 each)")
    gen.add_argument("--images_per_prompt", type=int, default=1, help="images per prompt")
    net = parser.add_argument_group("LoRAs and embeddings")
    net.add_argument("--network_weights", nargs="*", default=[], help="LoRA files (any format the toolkit reads)")
    net.add_argument("--network_mul", nargs="*", type=float, default=None, help="weight per LoRA file (default 1)")
    net.add_argument("--network_lbw", nargs="*", default=None, help="block weights per LoRA file ('' for none)")
    net.add_argument("--network_dir", action="append", default=None, help="folder searched for <lora:name> tags")
    net.add_argument("--network_merge", action="store_true", help="merge the command-line LoRAs once")
    net.add_argument("--textual_inversion_embeddings", nargs="*", default=[],
                     help="pivotal/TI embedding files (clip_l, clip_g); called by their file stem")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--grid_weights", default=None, help="comma-separated LoRA weights: grid columns")
    grid.add_argument("--grid_y", choices=["prompt", "seed", "model"], default="prompt", help="what the rows vary")
    grid.add_argument("--grid_seeds", nargs="*", type=int, default=None, help="row seeds for --grid_y seed")
    grid.add_argument("--grid_models", nargs="*", default=None, help="row models for --grid_y model")
    grid.add_argument("--grid_file", default=None, help="grid PNG path (default: <outdir>/grid.png)")
    return parser


class Session:
    """One loaded model with its embeddings and LoRA set."""

    def __init__(self, args, ckpt):
        from library.generation.embeddings import Embeddings
        from library.generation.loras import LoraSet
        from library.lora.file_io import save_dtype
        from library.models.sdxl_loader import load_sdxl

        self.model = load_sdxl(ckpt, vae=args.vae, dtype=save_dtype(args.precision))
        for part in (self.model.unet, self.model.text_encoder1, self.model.text_encoder2, self.model.vae):
            part.to(args.device)
        self.embeddings = Embeddings()
        for path in args.textual_inversion_embeddings:
            self.embeddings.load(self.model, path)
        self.loras = LoraSet(self.model)
        self.ckpt = ckpt


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.from_file:
        path = Path(args.from_file)
        if not path.is_file():
            raise UserError(f"{path}: prompt file not found (--from_file)")
        prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UserError("no prompt: give --prompt or --from_file")
    return prompts


def _cli_entries(args):
    from library.generation.loras import LoraEntry

    files = args.network_weights
    muls = args.network_mul if args.network_mul is not None else [1.0] * len(files)
    lbws = args.network_lbw if args.network_lbw is not None else [""] * len(files)
    if len(muls) != len(files) or len(lbws) != len(files):
        raise UserError(f"--network_mul ({len(muls)}) and --network_lbw ({len(lbws)}) need one value per "
                        f"--network_weights file ({len(files)})")
    return [LoraEntry(str(f), m, lbw or None) for f, m, lbw in zip(files, muls, lbws)]


def _entries_for(args, prompt: str, scale: float = 1.0):
    """(prompt text without tags, LoRA entries with weights times `scale`)."""
    from library.generation.loras import LoraEntry, resolve
    from library.generation.prompts import split_prompt

    text, tags = split_prompt(prompt)
    folders = args.network_dir or sorted({str(Path(f).parent) for f in args.network_weights})
    entries = _cli_entries(args) + [LoraEntry(resolve(t.name, folders), t.weight, t.lbw) for t in tags]
    return text, [LoraEntry(e.path, e.weight * scale, e.lbw) for e in entries]


def _render(session, args, prompt, seed, scale=1.0):
    from library.generation.sampling import Settings, generate

    text, entries = _entries_for(args, prompt, scale)
    session.loras.apply(entries)
    settings = Settings(width=args.W, height=args.H, steps=args.steps, guidance=args.scale, sampler=args.sampler,
                        max_token_length=args.max_token_length, v_parameterization=args.v_parameterization)
    image = generate(session.model, session.embeddings.expand(text), session.embeddings.expand(args.negative_prompt),
                     seed, settings)
    loras = ", ".join(f"{Path(e.path).stem}:{e.weight:g}" + (f":lbw={e.lbw}" if e.lbw else "") for e in entries)
    info = (f"{text}\nNegative prompt: {args.negative_prompt}\nSteps: {args.steps}, Sampler: {args.sampler}, "
            f"CFG scale: {args.scale}, Seed: {seed}, Size: {args.W}x{args.H}, Model: {Path(session.ckpt).name}"
            + (f", LoRAs: {loras}" if loras else ""))
    return image, info


def save_png(image, path: Path, info: str | None = None) -> None:
    from PIL.PngImagePlugin import PngInfo

    from library.file_io import atomic_path

    meta = PngInfo()
    if info:
        meta.add_text("parameters", info)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=meta)


def run_images(args, prompts, seed) -> None:
    session = Session(args, args.ckpt)
    if args.network_merge:
        session.loras.apply(_cli_entries(args))
        session.loras.freeze()
    outdir = Path(args.outdir)
    count = 0
    for prompt in prompts:
        for _ in range(args.images_per_prompt):
            image, info = _render(session, args, prompt, seed)
            path = outdir / f"{count:04d}_{seed}.png"
            save_png(image, path, info)
            print(f"{path}: seed {seed}, {prompt[:60]}")
            seed += 1
            count += 1
    print(f"wrote {count} images to {outdir}")


def run_grid(args, prompts, seed) -> None:
    from library.generation.grid import make_grid

    try:
        weights = [float(w) for w in args.grid_weights.split(",")]
    except ValueError:
        raise UserError(f"--grid_weights '{args.grid_weights}' is not a comma-separated list of numbers") from None
    if args.network_merge:
        raise UserError("--network_merge fixes the LoRA weights; a weight grid needs it left out")
    if args.grid_y == "seed":
        rows = [(args.ckpt, prompts[0], s, f"seed {s}") for s in (args.grid_seeds or [])]
    elif args.grid_y == "model":
        rows = [(m, prompts[0], seed, Path(m).stem) for m in (args.grid_models or [])]
    else:
        rows = [(args.ckpt, p, seed, p) for p in prompts]
    if not rows:
        raise UserError(f"--grid_y {args.grid_y} needs " +
                        {"seed": "--grid_seeds", "model": "--grid_models", "prompt": "prompts"}[args.grid_y])
    if args.grid_y != "model" and not args.ckpt:
        raise UserError("--ckpt is required")
    cells, sessions = [], {}
    for ckpt, prompt, row_seed, _ in rows:
        if ckpt not in sessions:
            sessions.clear()  # one model in memory at a time
            sessions[ckpt] = Session(args, ckpt)
        cells.append([_render(sessions[ckpt], args, prompt, row_seed, w)[0] for w in weights])
    grid = make_grid(cells, [f"weight {w:g}" for w in weights], [label for *_, label in rows])
    path = Path(args.grid_file or Path(args.outdir) / "grid.png")
    info = f"grid: LoRA weight x {args.grid_y}; weights {args.grid_weights}; prompt {prompts[0]}"
    save_png(grid, path, info)
    print(f"wrote {path}: {len(rows)} rows ({args.grid_y}) x {len(weights)} LoRA weights, "
          f"{grid.size[0]}x{grid.size[1]} px")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.grid_weights is None and not args.ckpt:
        raise UserError("--ckpt is required")
    if args.steps < 1 or args.images_per_prompt < 1:
        raise UserError("--steps and --images_per_prompt must be at least 1")
    prompts = _prompts(args)
    seed = args.seed if args.seed is not None else random.randint(0, 2**31 - 1)
    seeds_given_per_row = args.grid_weights is not None and args.grid_y == "seed"
    if args.seed is None and not seeds_given_per_row:  # so a random result can be drawn again
        print(f"seed: {seed}")
    if args.grid_weights is not None:
        run_grid(args, prompts, seed)
    else:
        run_images(args, prompts, seed)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
