"""What to do with a config key that is not one of our options.

kohya silently ignores such keys. We ignore them as well, listed in one notice, except:
  * a key that is very likely a misspelling of one of our options (`netwrok_dim`) stops the run
    with a "did you mean" line before any model loads (kohya would silently train without it);
  * under strict_config every unknown key is an error.

"Very likely a typo" is deliberately narrow so that real configs' foreign keys never trip it: the
key is not a known foreign key (foreign_keys.py), and it equals an option up to case and `-`/`_`,
or it is at least 6 characters long and one edit (insert, delete, substitute, swap two neighbours)
away from an option, two edits for options of 12 characters or more.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from library.errors import UserError
from library.training.config.foreign_keys import explanation, is_known_foreign

MIN_TYPO_LENGTH = 6
LONG_OPTION = 12


def edit_distance(a: str, b: str, limit: int = 3) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent swaps), capped at limit + 1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    previous2, previous = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = ca != cb
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return min(previous[-1], limit + 1)


def likely_typo(key: str, options) -> str | None:
    """The option `key` was very likely meant to be, or None."""
    if is_known_foreign(key):
        return None
    normalised = key.lower().replace("-", "_")
    if normalised != key and normalised in options:
        return normalised
    if len(key) < MIN_TYPO_LENGTH:
        return None
    best, best_distance = None, None
    for option in options:
        allowed = 2 if len(option) >= LONG_OPTION else 1
        distance = edit_distance(normalised, option, allowed)
        if distance <= allowed and (best_distance is None or distance < best_distance):
            best, best_distance = option, distance
    return best


@dataclass
class UnknownKeys:
    """Unknown keys of one config file, decided once the whole file (and strict mode) is known."""

    path: str
    entries: list = field(default_factory=list)  # (key, value, where)

    def add(self, key: str, value, where: str) -> None:
        self.entries.append((key, value, where))

    def resolve(self, options, strict: bool, notices: list) -> None:
        for key, value, where in self.entries:
            meant = likely_typo(key, options)
            if meant:
                raise UserError(f"{where} {key}: unknown option; did you mean '{meant}'?")
        if not self.entries:
            return
        if strict:
            key, value, where = self.entries[0]
            what = explanation(key, value)
            raise UserError(f"{where} {key}: unknown option" + (f" ({what})" if what else "")
                            + f" (strict_config = true; {len(self.entries)} unknown key(s) in this file)")
        described = []
        for key, value, _ in self.entries:
            what = explanation(key, value)
            described.append(f"{key} ({what})" if what else key)
        notices.append(f"{self.path}: ignored {len(self.entries)} key(s) that kohya's sdxl_train_network also ignores: "
                       + "; ".join(described) + " (strict_config = true makes unknown keys an error)")
