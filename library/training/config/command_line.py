"""The training script's command line: one `--option` per declared option (library/training/config/options.py),
in kohya's sections, plus `--config_file`. Only options given on the command line appear in the result."""
from __future__ import annotations

import argparse

from library.training.config.option_types import parse_bool, parse_str_list
from library.training.config.options import OPTIONS, SECTIONS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a LoRA (or LyCORIS network) on SDXL. Options as in kohya sd-scripts; see docs/options.md.",
        argument_default=argparse.SUPPRESS,  # only options given on the command line appear
    )
    parser.add_argument("--config_file", help="training config TOML (sections as kohya's; flat files load too), or a kohya_ss GUI .json")
    groups = {section: parser.add_argument_group(section) for section in SECTIONS}
    for option in OPTIONS.values():
        group = groups[option.section]
        if option.parse is parse_bool:
            group.add_argument(f"--{option.name}", nargs="?", const="true", metavar="BOOL", help=option.help)
        elif option.parse is parse_str_list:
            group.add_argument(f"--{option.name}", nargs="*", help=option.help)
        else:
            group.add_argument(f"--{option.name}", help=option.help)
    return parser
