"""Load an SDXL model (diffusers folder or single file) offline and print what it is.

Shows the layout, the architecture read from the weights, parameter counts, where the tokenizers
came from, and a tokenization check; optionally converts to the other layout.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="SDXL .safetensors/.ckpt file or diffusers folder")
    parser.add_argument("--vae", help="separate VAE file or folder")
    parser.add_argument("--tokenizer_cache_dir", help="folder with tokenizer/ and tokenizer_2/ (or kohya's cache names)")
    parser.add_argument("--save_single_file", help="also write the model as one original-layout .safetensors")
    parser.add_argument("--save_diffusers", help="also write the model as a diffusers folder")
    parser.add_argument("--save_precision", choices=["float", "fp16", "bf16"], default=None, help="dtype of --save_single_file")
    return parser


def summarize(model) -> list[str]:
    def count(module):
        return sum(p.numel() for p in module.parameters())

    unet = model.unet.config
    lines = [
        f"layout:         {model.layout} ({model.source_path})",
        f"UNet:           {count(model.unet):,} parameters; channels {list(unet.block_out_channels)}, "
        f"transformer depth {list(unet.transformer_layers_per_block)}, cross-attention {unet.cross_attention_dim}",
        f"text encoder 1: {count(model.text_encoder1):,} parameters; width {model.text_encoder1.config.hidden_size}, "
        f"{model.text_encoder1.config.num_hidden_layers} layers",
        f"text encoder 2: {count(model.text_encoder2):,} parameters; width {model.text_encoder2.config.hidden_size}, "
        f"{model.text_encoder2.config.num_hidden_layers} layers, projection {model.text_encoder2.config.projection_dim}",
        f"VAE:            {count(model.vae):,} parameters; {model.vae.config.latent_channels} latent channels, "
        f"scale {model.vae.config.scaling_factor}",
        f"tokenizers:     {len(model.tokenizer1):,} tokens; 'a photo of a cat' -> {model.tokenizer1('a photo of a cat').input_ids}",
    ]
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from library.models.sdxl_loader import load_sdxl
    from library.precisions import DTYPES

    model = load_sdxl(args.model, vae=args.vae, tokenizer_dir=args.tokenizer_cache_dir)
    print("\n".join(summarize(model)))
    if args.save_single_file:
        dtype = None if args.save_precision in (None, "float") else DTYPES[args.save_precision]
        model.save_single_file(args.save_single_file, dtype=dtype)
        print(f"wrote {args.save_single_file}")
    if args.save_diffusers:
        model.save_diffusers(args.save_diffusers)
        print(f"wrote {args.save_diffusers}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
