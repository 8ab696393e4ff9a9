"""Pivotal tuning: new trigger tokens learned by textual inversion while the LoRA trains.

Instead of borrowing a rare word ("sks") that already means something, the abstraction word of the
captions ("TOK") is replaced by brand-new tokens <s0><s1>... added to both tokenizers. Their
embedding rows in both text encoders are trained for the first `train_text_encoder_ti_frac` of the
optimizer steps (the pivot is at floor(frac x total steps)); after the pivot they are frozen and only
the LoRA keeps training, conditioned on the learned tokens.

How "only the new rows train" is guaranteed: each encoder's token embedding is swapped for a
`NewTokenEmbedding` that keeps the original, frozen weight (same parameter, same state_dict key,
untouched) and looks ids beyond the vocabulary up in a separate small tensor. Only that tensor is
given to the optimizer, so weight decay or momentum cannot reach any other row. It is kept outside
the encoder's parameters, so casting the frozen encoder to fp16/bf16 leaves it in fp32.

While they train, the new rows are gently pulled back towards the vocabulary's spread after every
optimizer step (x (std_vocab / std_new) ** 0.1, as the diffusers/cog pivotal scripts do), so a large
adaptive step cannot blow them up; the pull-back stops at the pivot like the training itself.

Saved next to every LoRA file: `<lora stem>_emb.safetensors` with `clip_l` [N, TE1 width] and
`clip_g` [N, TE2 width], the new rows only, which A1111, ComfyUI and diffusers'
`load_textual_inversion` read.

The trainer talks to this module through a `PivotalTuning` object that is a no-op when pivotal
tuning is off, so each hook in the run (run_setup.py, loop.py, batch_objective.py) is one line.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from library.errors import UserError
from library.training.config.pivotal_options import parse_abstractions

TOKEN_FORMAT = "<s{}>"
EMBEDDING_KEYS = ("clip_l", "clip_g")  # TE1 (CLIP ViT-L), TE2 (OpenCLIP ViT-bigG)
PULL_BACK_POWER = 0.1


# -- words -----------------------------------------------------------------------------------------
def token_names(abstractions: list[str], per_abstraction: int) -> dict[str, list[str]]:
    """{"TOK": ["<s0>", "<s1>"], "CAT": ["<s2>", "<s3>"]}, numbered across abstractions."""
    names, index = {}, 0
    for word in abstractions:
        names[word] = [TOKEN_FORMAT.format(index + k) for k in range(per_abstraction)]
        index += per_abstraction
    return names


def whole_word_pattern(words) -> re.Pattern:
    """Matches any of `words` only where it is not part of a longer word ("TOK" but not "TOKYO")."""
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def replace_words(text: str, replacements: dict[str, str]) -> str:
    """Replace each key of `replacements` in `text` as a whole word (case-sensitive)."""
    if not replacements or not text:
        return text
    return whole_word_pattern(replacements).sub(lambda match: replacements[match.group(0)], text)


# -- the embedding ---------------------------------------------------------------------------------
class NewTokenEmbedding(nn.Embedding):
    """A token embedding with `vocab` frozen original rows plus a few new rows kept elsewhere.

    `weight` is the original parameter itself (same key in state_dict, never modified). Ids from
    `vocab` up are looked up in `new_rows`, a tensor that is deliberately not a registered
    parameter of the text encoder: the optimizer gets it directly, and `.to(dtype)` on the frozen
    encoder does not cast it.
    """

    def __init__(self, original: nn.Embedding, new_rows: torch.Tensor):
        nn.Module.__init__(self)  # reuse the original weight instead of allocating one
        self.weight = original.weight
        for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"):
            setattr(self, name, getattr(original, name))
        self._new = [new_rows]

    @property
    def new_rows(self) -> torch.Tensor:
        return self._new[0]

    def set_new_rows(self, rows: torch.Tensor) -> None:
        self._new[0] = rows

    def full_weight(self) -> torch.Tensor:
        """[vocab + N, D]: the embedding matrix a resized encoder would have."""
        return torch.cat([self.weight, self.new_rows.to(self.weight)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        vocab = self.num_embeddings
        is_new = input_ids >= vocab
        states = nn.functional.embedding(torch.where(is_new, 0, input_ids), self.weight)
        if not bool(is_new.any()):
            return states
        rows = self.new_rows.to(device=states.device, dtype=states.dtype)
        new_states = rows[(input_ids - vocab).clamp(min=0)]
        return torch.where(is_new.unsqueeze(-1), new_states, states)


def _embeddings_owner(text_encoder) -> nn.Module:
    """The CLIP embeddings block holding `token_embedding` (with or without the text_model level)."""
    for module in text_encoder.modules():
        if isinstance(getattr(module, "token_embedding", None), nn.Embedding):
            return module
    raise UserError(f"{type(text_encoder).__name__} has no token_embedding; pivotal tuning needs CLIP text encoders")


def initial_rows(weight: torch.Tensor, count: int, generator: torch.Generator, init_ids: list[int] | None) -> torch.Tensor:
    """New rows: copies of the initializer word's token rows (cycled), or random with the vocabulary's std."""
    weight = weight.detach().float().cpu()
    if init_ids:
        return torch.stack([weight[init_ids[k % len(init_ids)]] for k in range(count)]).clone()
    return torch.randn(count, weight.shape[1], generator=generator) * weight.std()


# -- the trainer's interface -----------------------------------------------------------------------
class PivotalTuning:
    """Everything the trainer needs; with `enabled` False every method is a no-op."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self.frozen = True
        self.tokens: dict[str, list[str]] = {}
        self.replacements: dict[str, str] = {}
        self.rows: list[nn.Parameter] = []
        self.embeddings: list[NewTokenEmbedding] = []
        self.vocab_std: list[float] = []
        self.frac = 0.0
        self.output_name = ""
        self.user_trigger_phrase = None

    # setup ------------------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args, model, items=(), notices=None, seed: int | None = None) -> "PivotalTuning":
        if not args.train_text_encoder_ti:
            return cls(False)
        self = cls(True)
        self.frac = args.train_text_encoder_ti_frac
        self.output_name = args.output_name
        self.user_trigger_phrase = args.metadata_trigger_phrase
        abstractions = parse_abstractions(args.token_abstraction)
        _check_captions_use(abstractions, items)
        self.tokens = token_names(abstractions, args.num_new_tokens_per_abstraction)
        self.replacements = {word: "".join(names) for word, names in self.tokens.items()}
        new_tokens = [name for names in self.tokens.values() for name in names]
        seed = seed if seed is not None else (args.seed if args.seed is not None else 0)
        for index, (tokenizer, encoder) in enumerate(zip(model.tokenizers, model.text_encoders)):
            init_ids = _initializer_ids(tokenizer, args.initializer_token, index)
            clash = [name for name in new_tokens if name in tokenizer.get_vocab()]
            if clash:
                raise UserError(f"tokenizer {index + 1} already has the token(s) {', '.join(clash)}; pivotal tuning needs new ones")
            owner = _embeddings_owner(encoder)
            original = owner.token_embedding
            if isinstance(original, NewTokenEmbedding) or original.num_embeddings != len(tokenizer):
                raise UserError(f"text encoder {index + 1} has {original.num_embeddings} embedding rows but its tokenizer "
                                f"{len(tokenizer)} tokens; pivotal tuning needs the base model's own tokenizer")
            tokenizer.add_tokens(new_tokens)
            ids = tokenizer.convert_tokens_to_ids(new_tokens)
            if ids != list(range(original.num_embeddings, original.num_embeddings + len(new_tokens))):
                raise UserError(f"tokenizer {index + 1} gave the new tokens ids {ids}, not the rows after the vocabulary")
            generator = torch.Generator().manual_seed(seed * 2 + index)
            rows = nn.Parameter(initial_rows(original.weight, len(new_tokens), generator, init_ids))
            embedding = NewTokenEmbedding(original, rows)
            owner.token_embedding = embedding
            self.rows.append(rows)
            self.embeddings.append(embedding)
            self.vocab_std.append(float(original.weight.detach().float().std()))
        self.frozen = False
        if notices is not None:
            pairs = ", ".join(f"{word} -> {''.join(names)}" for word, names in self.tokens.items())
            notices.append(f"pivotal tuning: {pairs} in both text encoders; embeddings train until step "
                           f"floor({self.frac} x total steps), then only the LoRA trains")
        return self

    @property
    def token_list(self) -> list[str]:
        return [name for names in self.tokens.values() for name in names]

    @property
    def needs_grad(self) -> bool:
        """True while the new rows train (the text encoders must then run with autograd)."""
        return self.enabled and not self.frozen

    def pivot_step(self, total_steps: int) -> int:
        return math.floor(self.frac * total_steps)

    # captions and prompts ---------------------------------------------------------------------
    def replace_in_prompt(self, text: str) -> str:
        """The abstraction words of a caption, class, sample or validation prompt -> the new tokens."""
        return replace_words(text, self.replacements) if self.enabled else text

    def prepare_captions(self, captions: list[str], step: int, total_steps: int) -> list[str]:
        """Trainer hook before encoding a batch: freeze if `step` steps already reached the pivot."""
        if self.needs_grad and step >= self.pivot_step(total_steps):
            self.freeze()
        return [self.replace_in_prompt(caption) for caption in captions]

    # optimizer ---------------------------------------------------------------------------------
    def add_param_groups(self, groups: list, names: list | None, args, device=None) -> None:
        """Append one group per text encoder holding only its new rows (lr: text_encoder_lr)."""
        if not self.enabled:
            return
        lrs = args.text_encoder_lr if isinstance(args.text_encoder_lr, (list, tuple)) else [args.text_encoder_lr] * 2
        lrs = (list(lrs) + [lrs[0]] * 2)[:2]
        for index, rows in enumerate(self.rows):
            if device is not None and rows.device != torch.device(device):
                rows.data = rows.data.to(device)
            group = {"params": [rows], "lr": lrs[index] if lrs[index] is not None else args.learning_rate}
            if args.adam_weight_decay_text_encoder is not None:
                group["weight_decay"] = args.adam_weight_decay_text_encoder
            groups.append(group)
            if names is not None:
                names.append(f"embeddings te{index + 1}")

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Trainer hook after optimizer step number `step` (1-based): pull-back, then the pivot."""
        if not self.needs_grad:
            return
        with torch.no_grad():
            for rows, target in zip(self.rows, self.vocab_std):
                spread = float(rows.float().std())
                if spread > 0:
                    rows.mul_((target / spread) ** PULL_BACK_POWER)
        if step >= self.pivot_step(total_steps):
            self.freeze()

    def freeze(self) -> None:
        """The pivot: the encoders use a detached copy from now on; the optimizer's tensors get no grad."""
        if self.frozen:
            return
        for rows, embedding in zip(self.rows, self.embeddings):
            rows.requires_grad_(False)
            rows.grad = None
            embedding.set_new_rows(rows.detach().clone())
        self.frozen = True

    # saving ------------------------------------------------------------------------------------
    def embedding_tensors(self) -> dict[str, torch.Tensor]:
        """{"clip_l": [N, TE1 width], "clip_g": [N, TE2 width]} as used by the encoders now."""
        return {key: embedding.new_rows.detach().float().cpu().clone() for key, embedding in zip(EMBEDDING_KEYS, self.embeddings)}

    def embedding_path(self, lora_path: Path) -> Path:
        lora_path = Path(lora_path)
        return lora_path.with_name(f"{lora_path.stem}_emb.safetensors")

    def lora_metadata(self, lora_path) -> dict[str, str]:
        """Metadata added to the LoRA file: the tokens and how to trigger them in each UI."""
        if not self.enabled:
            return {}
        embedding = self.embedding_path(lora_path)
        extra = {} if self.user_trigger_phrase else {"modelspec.trigger_phrase": embedding.stem}
        return {
            **extra,
            "ss_pivotal_tokens": json.dumps(self.tokens),
            "ss_pivotal_embedding": embedding.name,
            # A1111/Forge and ComfyUI trigger an embedding by its file name (ComfyUI: "embedding:<name>")
            "ss_pivotal_trigger_phrase": embedding.stem,
            "ss_pivotal_diffusers_prompt": json.dumps(self.replacements),
            "ss_pivotal_frac": str(self.frac),
        }

    def save_embeddings(self, lora_path) -> Path | None:
        """Trainer hook after a LoRA save: write its _emb file; drop _emb files whose LoRA was removed."""
        if not self.enabled or lora_path is None:
            return None
        from library.file_io import save_safetensors_atomic

        lora_path = Path(lora_path)
        target = self.embedding_path(lora_path)
        metadata = {"pivotal.tokens": json.dumps(self.tokens), "pivotal.trigger_phrase": target.stem}
        save_safetensors_atomic(self.embedding_tensors(), target, metadata)
        ours = re.compile(rf"^(?P<stem>{re.escape(self.output_name)}(?:-\d{{6}}|-step\d{{8}})?)_emb\.safetensors$")
        for file in lora_path.parent.glob("*_emb.safetensors"):
            match = ours.match(file.name)
            if match and not file.with_name(match.group("stem") + lora_path.suffix).exists():
                file.unlink(missing_ok=True)  # its LoRA was removed by save_last_n_*
        return target

    # resume ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if not self.enabled:
            return {}
        return {"tokens": json.dumps(self.tokens), "frozen": self.frozen, **self.embedding_tensors()}

    def load_state_dict(self, state: dict) -> None:
        if not self.enabled:
            if state:
                raise UserError("the saved state has pivotal-tuning embeddings but train_text_encoder_ti is off")
            return
        if json.loads(state["tokens"]) != self.tokens:
            raise UserError(f"the saved state trained the tokens {state['tokens']}, this run {json.dumps(self.tokens)}")
        with torch.no_grad():
            for key, rows, embedding in zip(EMBEDDING_KEYS, self.rows, self.embeddings):
                rows.copy_(state[key].to(rows))
                embedding.set_new_rows(rows)
        self.frozen = False
        if bool(state["frozen"]):
            self.freeze()


def setup_pivotal(args, model, items=(), notices=None, seed: int | None = None) -> PivotalTuning:
    """Add the new tokens to `model` when train_text_encoder_ti is on; the trainer's one-line hook.
    `seed`: the run's (drawn when the config gave none) for the new rows' random initialisation."""
    return PivotalTuning.from_args(args, model, items, notices, seed=seed)


def _initializer_ids(tokenizer, word: str | None, index: int) -> list[int] | None:
    if not word:
        return None
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise UserError(f"initializer_token {word!r} gives no tokens in tokenizer {index + 1}")
    return ids


def _check_captions_use(abstractions: list[str], items) -> None:
    """An abstraction found in no caption would leave its tokens untrained: say so before training."""
    texts = []
    for item in items:
        subset = item.subset
        texts.append(" ".join(t for t in (getattr(subset, "caption_prefix", None), item.caption,
                                          getattr(subset, "caption_suffix", None)) if t))
    if not texts:
        return
    for word in abstractions:
        pattern = whole_word_pattern([word])
        if not any(pattern.search(text) for text in texts):
            raise UserError(
                f"token_abstraction {word!r} appears in no caption (nor class tokens, caption_prefix or caption_suffix); "
                f"write it where the concept should go, e.g. \"a photo of {word}\""
            )
