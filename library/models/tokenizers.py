"""CLIP tokenizers for SDXL, always from local files.

Sources, in order: the model's own `tokenizer/` and `tokenizer_2/` folders, a folder the user names
(`--tokenizer_cache_dir`, accepting kohya's cache layout), or the CLIP vocabulary shipped in
`clip_vocab/`. Nothing is downloaded. TE2's tokenizer pads with "!" (id 0), as OpenCLIP does.
"""
from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from library.errors import UserError

CLIP_VOCAB_FILE = Path(__file__).parent / "clip_vocab" / "bpe_simple_vocab_16e6.txt.gz"
MAX_LENGTH = 77
# Sub-folder names tried inside a user-named tokenizer folder: ours, then kohya's cache names.
_TOKENIZER_SUBFOLDERS = (
    ("tokenizer", "openai_clip-vit-large-patch14"),
    ("tokenizer_2", "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"),
)
_REQUIRED_FILES = ("vocab.json", "merges.txt")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The 49,408-token CLIP vocabulary and its BPE merges, built from the shipped merge list."""
    if not CLIP_VOCAB_FILE.exists():
        raise UserError(f"{CLIP_VOCAB_FILE}: CLIP vocabulary missing from the installation; restore it from the repository")
    lines = gzip.open(CLIP_VOCAB_FILE, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write vocab.json and merges.txt of the CLIP vocabulary into `folder`."""
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def _configure(tokenizer, second: bool):
    tokenizer.model_max_length = MAX_LENGTH
    if second:
        tokenizer.pad_token = "!"
    return tokenizer


def packaged_clip_tokenizers():
    """Both SDXL tokenizers built in memory from the shipped CLIP vocabulary."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    tok1 = CLIPTokenizer(vocab=dict(vocab), merges=list(pairs), pad_token="<|endoftext|>")
    tok2 = CLIPTokenizer(vocab=dict(vocab), merges=list(pairs), pad_token="!")
    return _configure(tok1, False), _configure(tok2, True)


def _load_folder(folder: Path, second: bool):
    from transformers import CLIPTokenizer

    missing = [name for name in _REQUIRED_FILES if not (folder / name).exists()]
    if missing and not (folder / "tokenizer.json").exists():
        raise UserError(f"{folder}: tokenizer folder lacks {', '.join(missing)}; copy the tokenizer files there")
    return _configure(CLIPTokenizer.from_pretrained(str(folder), local_files_only=True), second)


def load_tokenizers_from_model_folder(model_dir: Path):
    """Tokenizers of a diffusers SDXL folder (`tokenizer/`, `tokenizer_2/`)."""
    result = []
    for index, name in enumerate(("tokenizer", "tokenizer_2")):
        folder = model_dir / name
        if not folder.is_dir():
            raise UserError(
                f"{model_dir}: diffusers SDXL folder has no '{name}/' sub-folder; copy it from the model's repository "
                "or pass --tokenizer_cache_dir with tokenizer/ and tokenizer_2/"
            )
        result.append(_load_folder(folder, second=index == 1))
    return tuple(result)


def load_tokenizers_from_user_folder(folder: str | Path):
    """Tokenizers from a user-named folder holding tokenizer/ + tokenizer_2/ (or kohya's cache names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: tokenizer folder not found (--tokenizer_cache_dir)")
    result = []
    for index, names in enumerate(_TOKENIZER_SUBFOLDERS):
        found = next((folder / n for n in names if (folder / n).is_dir()), None)
        if found is None:
            raise UserError(f"{folder}: no '{names[0]}/' (or '{names[1]}/') tokenizer sub-folder; create it with vocab.json and merges.txt")
        result.append(_load_folder(found, second=index == 1))
    return tuple(result)


def save_tokenizers(tokenizers, model_dir: Path) -> None:
    for tokenizer, name in zip(tokenizers, ("tokenizer", "tokenizer_2")):
        tokenizer.save_pretrained(str(model_dir / name))
