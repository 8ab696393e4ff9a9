"""Write the training TOML equivalent to a kohya_ss GUI JSON file (a GUI preset or saved config).

The trainer reads such files directly (`--config_file x.json`); this shows what it reads them as:
the sd-scripts options the GUI's train button would pass, additional_parameters included, grouped in
kohya's sections. Sample prompts held as text in the file go to <output stem>_sample_prompts.txt.

    python tools/convert_kohya_ss_json.py "SDXL - LoRA AI_Now ADamW v1.0.json" --output my_lora.toml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.entry import run_cli  # noqa: E402

from library.errors import UserError  # noqa: E402


def converted_sections(path: Path, notices: list) -> tuple[dict, str | None]:
    """({section: {option: value}}, sample prompt text or None) for a GUI file."""
    import json

    from library.training.config.config_loader import _parse_value
    from library.training.config.kohya_ss_gui import additional_options, gui_options
    from library.training.config.options import OPTIONS, SECTIONS

    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: invalid JSON (line {error.lineno}: {error.msg})") from None
    where = f"{path}:"
    options, prompts = gui_options(data, where, notices)
    options.update(additional_options(data.get("additional_parameters", ""), where))  # the GUI's command line wins
    sections: dict[str, dict] = {}
    for name, value in options.items():
        if name not in OPTIONS:  # kept for the trainer's own notice, as the GUI passes it
            sections.setdefault("kohya_ss_gui", {})[name] = value
            continue
        parsed = _parse_value(OPTIONS[name], value, where)
        if name == "resolution":
            parsed = f"{parsed[0]},{parsed[1]}"  # as kohya's configs write it
        sections.setdefault(OPTIONS[name].section, {})[name] = list(parsed) if isinstance(parsed, tuple) else parsed
    order = [*SECTIONS, "kohya_ss_gui"]
    return {section: dict(sorted(sections[section].items())) for section in order if section in sections}, prompts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file", help="kohya_ss GUI .json (preset or saved config)")
    parser.add_argument("--output", help="TOML to write (default: the JSON's name with .toml)")
    parser.add_argument("--force", action="store_true", help="replace an existing output file")
    return parser


def main(argv=None) -> int:
    import toml

    from library.file_io import write_text_atomic

    args = build_parser().parse_args(argv)
    source = Path(args.json_file)
    if not source.is_file():
        raise UserError(f"{source}: file not found")
    target = Path(args.output) if args.output else source.with_suffix(".toml")
    if target.resolve() == source.resolve():
        raise UserError(f"{target}: the output would replace the JSON file it converts; give --output")
    if target.exists() and not args.force:
        raise UserError(f"{target}: exists; give --force to replace it, or another --output")
    notices: list[str] = []
    sections, prompts = converted_sections(source, notices)
    if prompts is not None:
        prompt_file = target.with_name(f"{target.stem}_sample_prompts.txt")
        write_text_atomic(prompt_file, prompts)
        sections.setdefault("sample_prompt_arguments", {})["sample_prompts"] = str(prompt_file)
        print(f"wrote {prompt_file}")
    header = (f"# converted from {source.name} (kohya_ss GUI) by tools/convert_kohya_ss_json.py:\n"
              "# the options the GUI's train button passes to sdxl_train_network.py\n")
    write_text_atomic(target, header + toml.dumps(sections))
    for notice in notices:
        print(f"notice: {notice}")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
