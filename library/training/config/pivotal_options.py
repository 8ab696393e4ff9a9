"""The pivotal-tuning options (train_text_encoder_ti and its companions) parsed and checked before any
model loads; library/training/pivotal.py does the tuning itself."""
from __future__ import annotations

from library.errors import UserError


def parse_abstractions(text: str | None) -> list[str]:
    """"TOK" or "TOK, CAT" -> ["TOK", "CAT"]."""
    words = [word.strip() for word in (text or "").split(",")]
    if not words or any(not word for word in words):
        raise UserError(f"token_abstraction {text!r}: give one word, or a comma list of words (e.g. \"TOK\" or \"TOK,HAT\")")
    if len(set(words)) != len(words):
        raise UserError(f"token_abstraction {text!r}: a word is listed twice")
    return words


_PIVOTAL_OPTIONS = ("train_text_encoder_ti_frac", "token_abstraction", "num_new_tokens_per_abstraction", "initializer_token",
                    "adam_weight_decay_text_encoder")


def check_pivotal_options(args, sources: dict, notices: list) -> None:
    """Config-time checks of the pivotal-tuning options (before any model loads)."""
    def where(name):
        return sources.get(name, "command line")

    if not args.train_text_encoder_ti:
        for name in _PIVOTAL_OPTIONS:
            if sources.get(name, "default") != "default":
                notices.append(f"{where(name)}: {name} has no effect without train_text_encoder_ti = true")
        return
    if args.cache_text_encoder_outputs or args.cache_text_encoder_outputs_to_disk:
        raise UserError("pivotal tuning (train_text_encoder_ti) cannot use cache_text_encoder_outputs: the new tokens change "
                        "the text-encoder outputs every step; remove cache_text_encoder_outputs")
    if not args.network_train_unet_only:
        raise UserError(
            f"{where('train_text_encoder_ti')}: pivotal tuning (train_text_encoder_ti) trains new token embeddings instead of "
            "a text-encoder LoRA, and the two together are not supported; set network_train_unet_only = true"
        )
    if not 0 < args.train_text_encoder_ti_frac <= 1:
        raise UserError(f"{where('train_text_encoder_ti_frac')}: train_text_encoder_ti_frac must be in (0, 1], "
                        f"got {args.train_text_encoder_ti_frac:g}")
    if args.num_new_tokens_per_abstraction < 1:
        raise UserError(f"{where('num_new_tokens_per_abstraction')}: num_new_tokens_per_abstraction must be at least 1")
    parse_abstractions(args.token_abstraction)
    rates = args.text_encoder_lr if isinstance(args.text_encoder_lr, (list, tuple)) else [args.text_encoder_lr]
    if any(rate == 0 for rate in rates) or (args.text_encoder_lr is None and not args.learning_rate):
        raise UserError(f"{where('text_encoder_lr')}: text_encoder_lr is the new embeddings' learning rate in pivotal tuning; "
                        "0 would leave them untrained")
