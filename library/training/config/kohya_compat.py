"""Values kohya accepts that need a word here, applied once the config is resolved.

  * max_token_length other than 75/150/225: kohya tokenises 75-token chunks up to the length it
    is given, so e.g. 128 behaves as 75 and 256 as 225; we use that length and say so.
  * Upload settings: uploading is not done here. A non-empty huggingface_repo_id (or
    save_state_to_huggingface) gets one notice and training proceeds; resuming from the Hub
    cannot be done without the network, so resume_from_huggingface with resume is an error.
"""
from __future__ import annotations

import math

from library.errors import UserError
from library.training.optim.optimizer_classes import parse_kwargs

CHUNK = 75
LENGTHS = (75, 150, 225)


def kohya_token_length(requested: int) -> int | None:
    """The number of caption tokens kohya's SDXL tokenisation uses for max_token_length = requested.

    kohya pads to requested + 2 tokens and cuts 75-token chunks starting at positions 1, 76, 151, ...
    while the chunk start is below requested - 73; a requested length of 75 or less is one chunk
    only when it is exactly 75 (kohya fails on shorter ones).
    """
    if requested == CHUNK:
        return CHUNK
    if requested < CHUNK:
        return None
    return CHUNK * math.ceil((requested - CHUNK + 1) / CHUNK)


def apply_kohya_compat(args, sources: dict, notices: list) -> None:
    _token_length(args, sources, notices)
    _uploads(args, sources, notices)
    _implied_options(args, notices)


def _implied_options(args, notices: list) -> None:
    """Options kohya turns on or switches because of another one, decided here once."""
    if args.cpu_offload_checkpointing and not args.gradient_checkpointing:
        notices.append("cpu_offload_checkpointing turns gradient_checkpointing on (as in kohya)")
        args.gradient_checkpointing = True
    if (args.optimizer_type or "").lower().endswith("adafactor") and args.lr_scheduler != "adafactor":
        # kohya: Adafactor's relative_step defaults to True; it then picks its own lr, and the schedule is "adafactor"
        if parse_kwargs(args.optimizer_args, "optimizer_args").get("relative_step", True):
            notices.append(f"Adafactor with relative_step picks its own learning rate: lr_scheduler '{args.lr_scheduler}' "
                           "becomes 'adafactor' (as in kohya; optimizer_args relative_step=False keeps yours)")
            args.lr_scheduler = "adafactor"


def _token_length(args, sources: dict, notices: list) -> None:
    requested = args.max_token_length
    if requested is None or requested in LENGTHS:
        return
    used = kohya_token_length(requested)
    where = sources.get("max_token_length", "command line")
    if used not in LENGTHS:
        raise UserError(f"{where}: max_token_length = {requested}: use 75, 150 or 225 (tokens per caption, in 75-token chunks)")
    notices.append(f"{where}: max_token_length = {requested} is not 75, 150 or 225; kohya tokenises it as {used // CHUNK} "
                   f"75-token chunk(s), so captions use {used} tokens here too")
    args.max_token_length = used


def _uploads(args, sources: dict, notices: list) -> None:
    if args.resume_from_huggingface and args.resume:
        raise UserError(f"{sources['resume_from_huggingface']}: resume_from_huggingface: this toolkit never downloads; "
                        f"download the state folder and give its local path in resume (now {args.resume!r})")
    wanted = [name for name in ("huggingface_repo_id", "save_state_to_huggingface") if getattr(args, name)]
    if wanted:
        target = f" to {args.huggingface_repo_id}" if args.huggingface_repo_id else ""
        notices.append(f"{sources[wanted[0]]}: {', '.join(wanted)}: uploading{target} is not done by this toolkit; "
                       "the LoRA files stay in output_dir, upload them yourself")


def dataset_difference_notices(args, specs, notices: list) -> None:
    """Where a dataset option trains differently from kohya's current sdxl_train_network, say so."""
    if any(spec.network_multiplier != 1.0 for spec in specs):
        notices.append("network_multiplier: each dataset trains with the LoRA at its multiplier (kohya's design; kohya's "
                       "current train_network.py accepts the option but no longer applies it)")
    if args.masked_loss and args.conditioning_data_dir and not args.dataset_config:
        notices.append("conditioning_data_dir with train_data_dir: the masks apply to the DreamBooth folders (kohya reads "
                       "conditioning_data_dir only from a dataset config and would train these folders without masks)")
