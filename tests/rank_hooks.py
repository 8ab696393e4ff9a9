"""sdxl_train_network.py with test hooks, for the several-process tests (tests/test_cross_rank.py):

    accelerate launch --multi_gpu --num_processes 2 tests/rank_hooks.py --config_file c.toml

RANK_HOOKS (comma-separated) chooses the hooks; RANK_HOOKS_DIR is where they write:
- `slow_cache_check`: process 1 starts checking latent caches 5 s late (the race where another
  process has already rewritten a stale cache by then);
- `step_markers`: after each optimizer step a process writes `step<N>_rank<R>` and sleeps 1 s
  (so a test can signal one process in the middle of a run);
- `count_text_encoding`: each process writes how many captions it encoded (`encoded_rank<R>`);
- `scarce_memory_on_rank1`: process 1's memory pre-flight sees 1 MiB free (a GPU another job fills);
- `count_model_loads`: each process writes `loaded_rank<R>` when it starts loading the models.
Every process also writes its PID (`pid_rank<R>`). Nothing here changes what training computes.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RANK = int(os.environ.get("RANK", "0"))
FOLDER = Path(os.environ.get("RANK_HOOKS_DIR", "."))
HOOKS = set(filter(None, os.environ.get("RANK_HOOKS", "").split(",")))


def write(name: str, text: str) -> None:
    temporary = FOLDER / f".{name}.tmp"
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, FOLDER / name)


def install() -> None:
    write(f"pid_rank{RANK}", str(os.getpid()))
    if "slow_cache_check" in HOOKS:
        from library.training.inputs.latent_source import LatentSource

        prepare = LatentSource.prepare

        def late_prepare(self, *args, **kwargs):
            if RANK == 1 and self.items:
                time.sleep(5)
            return prepare(self, *args, **kwargs)

        LatentSource.prepare = late_prepare
    if "step_markers" in HOOKS:
        from library.training.loop import Trainer

        step = Trainer.optimizer_step
        count = {"steps": 0}

        def marked_step(self):
            logs = step(self)
            count["steps"] += 1
            write(f"step{count['steps']}_rank{RANK}", "")
            time.sleep(1)
            return logs

        Trainer.optimizer_step = marked_step
    if "count_text_encoding" in HOOKS:
        import library.training.inputs.text_conditioning as text_conditioning

        encode = text_conditioning.encode_texts

        def counted(tokenizers, encoders, texts, *args, **kwargs):
            outputs = encode(tokenizers, encoders, texts, *args, **kwargs)
            write(f"encoded_rank{RANK}", str(len(outputs)))
            return outputs

        text_conditioning.encode_texts = counted
    if "scarce_memory_on_rank1" in HOOKS and RANK == 1:
        from types import SimpleNamespace

        from library.training.memory import memory_preflight

        memory_preflight.free_memory = lambda device_type: SimpleNamespace(bytes=1 << 20, where="test: 1 MiB free")
    if "count_model_loads" in HOOKS:
        import library.models.sdxl_loader as sdxl_loader

        load = sdxl_loader.load_sdxl

        def marked_load(*args, **kwargs):
            write(f"loaded_rank{RANK}", "")
            return load(*args, **kwargs)

        sdxl_loader.load_sdxl = marked_load


if __name__ == "__main__":
    install()
    from sdxl_train_network import main

    sys.exit(main())
