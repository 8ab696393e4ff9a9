"""Resolve the training configuration: defaults < --config_file TOML < command line.

A kohya_ss GUI JSON file (.json) is read as the GUI reads it (kohya_ss_gui.py), then like a TOML.
As in kohya, every TOML table merges into one namespace whatever its name, and flat files load too.
Every key we know is checked against the option table before any model is loaded: a wrong type, a
value outside its choices, a dataset-only key or an option this toolkit does not offer is a
UserError naming the file, the section and the key. Keys we do not know are kohya's business:
unknown_keys.py ignores them with one notice, stops on a likely typo, or refuses them all under
strict_config.
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import UserError
from library.training.config.command_line import build_parser
from library.training.config.kohya_compat import apply_kohya_compat
from library.training.config.option_types import TYPE_NAMES, parse_str
from library.training.config.resolved_options import ResolvedOptions
from library.training.config.options import (
    DATASET_ONLY_KEYS,
    IGNORED,
    NETWORK_ARG_KEYS,
    OPTIONS,
    PENDING,
    UNSUPPORTED,
    Option,
)
from library.training.config.unknown_keys import UnknownKeys


@dataclass
class ResolvedConfig:
    args: argparse.Namespace
    sources: dict = field(default_factory=dict)  # option name -> "default" | "<file> [section]" | "command line"
    notices: list = field(default_factory=list)  # one-line messages shown before training


def _parse_value(option: Option, value, where: str):
    try:
        parsed = option.parse(value)
    except ValueError as error:
        raise UserError(f"{where} {option.name}: {error} ({TYPE_NAMES.get(option.parse, 'value')})") from None
    if option.refused_choices and parsed in option.refused_choices:
        raise UserError(f"{where} {option.name} = {parsed!r}: not supported: {option.refused_choices[parsed]}")
    if option.choices and parsed is not None and parsed not in option.choices:
        raise UserError(f"{where} {option.name}: {parsed!r} is not one of {', '.join(map(str, option.choices))}")
    return parsed


def _config_path(given: str) -> Path:
    """kohya appends .toml to a --config_file given without it."""
    path = Path(given)
    if not path.exists() and path.suffix != ".toml" and path.with_name(path.name + ".toml").exists():
        return path.with_name(path.name + ".toml")
    return path


def _read_config(path: Path, notices: list) -> dict:
    """A TOML config, or a kohya_ss GUI JSON file read as the GUI's train button reads it."""
    if not path.exists():
        raise UserError(f"{path}: config file not found (--config_file)")
    if path.suffix.lower() == ".json":
        from library.training.config.kohya_ss_gui import read_gui_json

        return read_gui_json(path, notices)
    return _read_toml(path)


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: invalid TOML ({error})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None


def _inert(option: Option, value) -> bool:
    """Values GUIs write for "not set": "" for an option that is not a plain string, or for one that
    is unset by default; false for an optional path. kohya never reads them; neither do we."""
    if value == "" and (option.parse is not parse_str or option.default is None):
        return True
    return value is False and option.parse is parse_str and option.default is None


def _flatten_file(path: Path, data: dict, notices: list) -> tuple[dict[str, tuple[object, str]], UnknownKeys]:
    """({option: (raw value, "file [section]")}, unknown keys); network keys are collected separately.

    As in kohya, every table merges into one namespace whatever its name ([model], [train],
    [network_arguments] ...); a table nested in a table is a key whose value is a table.
    """
    entries: dict[str, tuple[object, str]] = {}
    forwarded: list[str] = []
    unknown = UnknownKeys(str(path))

    def visit(key: str, value, section: str | None):
        where = f"{path}: [{section}]" if section else f"{path}:"
        source = f"{path} [{section}]" if section else str(path)
        if key in OPTIONS:
            if _inert(OPTIONS[key], value):
                return
            if key in entries and entries[key][0] != value:
                # kohya keeps the later value; say so, since one of the two is a mistake
                notices.append(f"{where} {key} = {value!r} replaces {key} = {entries[key][0]!r} from {entries[key][1]} "
                               "(set twice; the later one wins, as in kohya)")
            entries[key] = (value, source)
        elif key in NETWORK_ARG_KEYS:
            forwarded.append(f"{key}={_toml_scalar(value)}")
            notices.append(
                f"{where} {key} is a network argument; kohya ignores it at this level, here it is forwarded as "
                f'network_args "{key}={_toml_scalar(value)}"'
            )
        elif key in DATASET_ONLY_KEYS:
            raise UserError(
                f"{where} {key}: is a dataset config key, not a training option; put it in the --dataset_config "
                f"file under {DATASET_ONLY_KEYS[key]}"
            )
        else:
            unknown.add(key, value, where)

    for key, value in data.items():
        if isinstance(value, dict):
            for inner_key, inner_value in value.items():
                visit(inner_key, inner_value, key)
        else:
            visit(key, value, None)
    if forwarded:
        entries["__forwarded_network_args__"] = (forwarded, str(path))
    return entries, unknown


def _toml_scalar(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _merge_network_args(explicit: list[str] | None, forwarded: list[str], where: str) -> list[str]:
    merged = list(explicit or [])
    given = {item.split("=", 1)[0].strip() for item in merged}
    for item in forwarded:
        key = item.split("=", 1)[0]
        if key in given:
            raise UserError(f"{where}: {key} is set both as a top-level key and in network_args; keep the network_args one")
        merged.append(item)
    return merged


def resolve_config(argv=None) -> ResolvedConfig:
    parser = build_parser()
    cli = vars(parser.parse_args(argv))
    notices: list[str] = []
    values = {name: option.default for name, option in OPTIONS.items()}
    sources = {name: "default" for name in OPTIONS}

    config_path = _config_path(cli.pop("config_file")) if cli.get("config_file") else None
    forwarded: list[str] = []
    unknown = None
    if config_path is not None:
        entries, unknown = _flatten_file(config_path, _read_config(config_path, notices), notices)
        forwarded = entries.pop("__forwarded_network_args__", ([], ""))[0]
        for name, (raw, where) in entries.items():
            section = where[len(str(config_path)):].strip() or ""
            values[name] = _parse_value(OPTIONS[name], raw, f"{config_path}: {section}".rstrip())
            sources[name] = where
    for name, raw in cli.items():
        values[name] = _parse_value(OPTIONS[name], raw, "command line:")
        sources[name] = "command line"
    if unknown is not None:  # after the command line: --strict_config applies to the file too
        unknown.resolve([*OPTIONS, *NETWORK_ARG_KEYS, *DATASET_ONLY_KEYS], values["strict_config"], notices)
    if forwarded:
        values["network_args"] = _merge_network_args(values["network_args"], forwarded, str(config_path))

    args = ResolvedOptions(**values, config_file=str(config_path) if config_path else None)
    _apply_aliases(args, sources, notices)
    _check_status(args, sources, notices)
    apply_kohya_compat(args, sources, notices)
    return ResolvedConfig(args.freeze(), sources, notices)


def _apply_aliases(args, sources: dict, notices: list) -> None:
    if args.caption_extention is not None:
        if sources["caption_extension"] != "default" and args.caption_extension != args.caption_extention:
            raise UserError(f"{sources['caption_extention']}: caption_extention (misspelt alias) conflicts with caption_extension; keep one")
        args.caption_extension = args.caption_extention
        sources["caption_extension"] = sources["caption_extention"]
    if args.use_8bit_adam or args.use_lion_optimizer:
        legacy = "AdamW8bit" if args.use_8bit_adam else "Lion"
        if args.optimizer_type and args.optimizer_type.lower() != legacy.lower():
            raise UserError(f"use_8bit_adam/use_lion_optimizer conflict with optimizer_type = {args.optimizer_type!r}; keep optimizer_type")
        args.optimizer_type = legacy
        notices.append(f"use_8bit_adam/use_lion_optimizer is the old spelling of optimizer_type = \"{legacy}\"")


def _check_status(args, sources: dict, notices: list) -> None:
    ignored: dict[str, list[str]] = {}  # reason -> options, so each reason is one line
    for name, option in OPTIONS.items():
        value = getattr(args, name)
        if sources[name] == "default" or value == option.default:
            continue
        where = sources[name]
        if option.status == PENDING:
            raise UserError(f"{where}: {name}: not supported yet by this toolkit; remove it (see docs/options.md for what is)")
        if option.status == UNSUPPORTED:
            raise UserError(f"{where}: {name}: not supported: {option.reason}")
        if option.status == IGNORED:
            ignored.setdefault(option.reason, []).append(name)
    for reason, names in ignored.items():
        notices.append(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} ignored: {reason}")


def print_notices(resolved: ResolvedConfig, stream=None) -> None:
    for notice in resolved.notices:
        print(f"notice: {notice}", file=stream or sys.stderr)


def write_resolved_config(resolved: ResolvedConfig) -> Path:
    """`--output_config`: the effective configuration, grouped by section, next to the outputs.

    kohya overwrites the --config_file itself; writing a new file never loses the user's own.
    """
    import toml

    from library.file_io import write_text_atomic

    args = resolved.args
    if not args.output_dir:
        raise UserError("output_config needs output_dir (the resolved config is written there)")
    sections: dict[str, dict] = {}
    for name, option in OPTIONS.items():
        value = getattr(args, name)
        if value is None or name in ("output_config", "print_config") or value == option.default:
            continue
        sections.setdefault(option.section, {})[name] = list(value) if isinstance(value, tuple) else value
    if "resolution" in sections.get("dataset_arguments", {}):
        width, height = args.resolution
        sections["dataset_arguments"]["resolution"] = f"{width},{height}"
    target = Path(args.output_dir) / f"{args.output_name}_config.toml"
    if args.config_file and target.resolve() == Path(args.config_file).resolve():
        raise UserError(f"{target}: output_config would overwrite the --config_file it reads (comments and "
                        "layout would be lost); give another output_name or output_dir")
    write_text_atomic(target, "# resolved by sdxl_train_network.py --output_config\n" + toml.dumps(sections))
    return target
