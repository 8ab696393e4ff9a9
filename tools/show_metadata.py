"""Print the metadata of a LoRA file (kohya ss_* keys, sshs hashes, ModelSpec, our tool history).

    python tools/show_metadata.py my_lora.safetensors [--key ss_network_dim] [--any_safetensors]

Values that hold JSON (ss_network_args, ss_tag_frequency, ss_dataset_dirs, ss_lora_tools_history
...) are printed decoded, so the output is one JSON document. A value longer than 2,000 characters
is cut and ends in "... (N bytes)" unless --full is given. The last line to stderr summarises
the file (tensor count, modules, rank). Files that are not LoRAs are refused unless
--any_safetensors is given (then any .safetensors file's metadata is shown).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help=".safetensors file")
    parser.add_argument("--key", action="append", default=None, help="print only this key (repeatable)")
    parser.add_argument("--any_safetensors", action="store_true", help="show metadata of non-LoRA files too")
    parser.add_argument("--full", action="store_true", help="print long values whole (default: cut after 2,000 characters)")
    return parser


def decoded(metadata: dict, full: bool = False) -> dict:
    from library.lora.metadata import PRINT_LIMIT, shorten

    out = {}
    for key, value in sorted(metadata.items()):
        if isinstance(value, str) and len(value) > PRINT_LIMIT and not full:
            out[key] = shorten(value)
            continue
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[key] = value
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from library.lora.file_io import read_lora
    from library.lora.lora_files import read_groups

    if args.any_safetensors:
        tensors, metadata = read_lora(args.file)
        what = f"{len(tensors)} tensors"
    else:
        groups, metadata = read_groups(args.file)
        what = f"{len(groups)} LoRA modules, ss_network_dim {metadata.get('ss_network_dim', '?')}"
    shown = decoded(metadata, args.full)
    if args.key:
        missing = [k for k in args.key if k not in shown]
        if missing:
            raise UserError(f"{args.file}: no metadata key {', '.join(missing)} (keys: {', '.join(sorted(shown))})")
        shown = {k: shown[k] for k in args.key}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    print(f"{args.file}: {len(metadata)} metadata keys, {what}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
