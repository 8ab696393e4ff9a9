"""The trainer never loses the user's work: it refuses to overwrite its inputs, checks where it writes
before any model loads, holds one run per output folder, and stops on a signal with a resumable state."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from library.errors import UserError
from library.training.outputs.output_lock import LOCK_NAME, OutputLock
from library.training.outputs.train_state import find_state
from tests.training_fixtures import base_config, lora_tensors, make_concept_images, write_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety_data")
    make_concept_images(root / "2_catwomen", count=4)
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the run gets as far as loading the model."""
    import library.models.sdxl_loader as loader

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output checks failed")

    monkeypatch.setattr(loader, "load_sdxl", refuse)


def _main(tmp_path, model, train_dir, name="run", **overrides) -> int:
    from sdxl_train_network import main

    out = overrides.pop("output_dir", tmp_path / f"{name}_out")
    config = base_config(model, train_dir, out, **overrides)
    return main(["--config_file", str(write_config(tmp_path / f"{name}.toml", config))])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_never_overwrite_inputs(tiny_single_file, train_dir, tmp_path, no_model_load):
    models = tmp_path / "models"
    models.mkdir()
    base = models / "base.safetensors"
    shutil.copyfile(tiny_single_file, base)
    weights = models / "tiny_lora.safetensors"
    weights.write_bytes(b"pretend LoRA")
    before = {base: _sha(base), weights: _sha(weights)}

    # output_dir = the models folder, output_name = the model's name (the report's 82 MB -> 688 KB case)
    with pytest.raises(UserError, match=r"output_name 'base' in output_dir .*models would overwrite .*base\.safetensors, "
                                        r"an input of this run \(pretrained_model_name_or_path\); choose another output_name"):
        _main(tmp_path, base, train_dir, output_dir=models, output_name="base")
    # continuing from a LoRA whose name the run would save under
    with pytest.raises(UserError, match=r"would overwrite .*tiny_lora\.safetensors, an input of this run \(network_weights\)"):
        _main(tmp_path, base, train_dir, output_dir=models, network_weights=str(weights))
    # a state folder the run would replace, holding an input
    state = models / "tiny_lora-state"
    state.mkdir()
    shutil.move(weights, state / "network.safetensors")
    with pytest.raises(UserError, match=r"may replace or delete .*tiny_lora-state, which holds an input of this run"):
        _main(tmp_path, base, train_dir, output_dir=models, network_weights=str(state / "network.safetensors"))
    shutil.move(state / "network.safetensors", weights)
    # outputs leave output_dir only through output_dir itself
    for name in ("../../models/base_copy", "sub/name", ".."):
        with pytest.raises(UserError, match=r"output_name = .* must be a plain name without folders"):
            _main(tmp_path, base, train_dir, output_name=name)
    from library.training.outputs.preflight import check_plain_name

    with pytest.raises(UserError, match=r"command line: output_name = 'a\\\\b' must be a plain name"):
        check_plain_name("a\\b", "output_name", "command line")
    assert not (tmp_path / "models" / "base_copy.safetensors").exists()
    assert {path: _sha(path) for path in before} == before  # byte for byte


def test_unwritable_output_or_logging_dir_fails_before_the_model_loads(tiny_single_file, train_dir, tmp_path, monkeypatch,
                                                                       no_model_load):
    a_file = tmp_path / "not_a_folder"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"output_dir .*not_a_folder/out: cannot be created, because a file is in the way"):
        _main(tmp_path, tiny_single_file, train_dir, output_dir=a_file / "out")
    with pytest.raises(UserError, match=r"logging_dir .*not_a_folder: cannot be created"):
        _main(tmp_path, tiny_single_file, train_dir, log_with="tensorboard", logging_dir=str(a_file))

    # a read-only mount (simulated: the tests run as root, where chmod does not stop writes)
    import library.training.outputs.preflight as preflight

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(preflight.tempfile, "mkstemp", read_only)
    with pytest.raises(UserError, match=r"output_dir .*ro_out: cannot write there \(read-only file system\); choose a writable"):
        _main(tmp_path, tiny_single_file, train_dir, output_dir=tmp_path / "ro_out")


def test_stale_lock_is_taken_over_and_leftover_temporaries_removed(tiny_single_file, train_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (out / LOCK_NAME).write_text(f'{{"pid": {gone.pid}, "host": "{os.uname().nodename}", "started": "yesterday"}}')
    (out / ".tiny_lora.safetensors.k2j3.tmp").write_bytes(b"half a LoRA")  # a killed save
    (out / ".tiny_lora-step00000002-state.x9").mkdir()  # a killed state save
    (out / ".other.safetensors.abc.tmp").write_bytes(b"not ours")  # another tool's write: left alone
    assert _main(tmp_path, tiny_single_file, train_dir, output_dir=out, max_train_steps=1) == 0
    printed = capsys.readouterr().out
    assert f"took over the lock of an earlier run (PID {gone.pid}, started yesterday) that is no longer running" in printed
    assert "removed 2 leftover temporary file(s) of an interrupted save" in printed
    assert sorted(p.name for p in out.iterdir()) == [".other.safetensors.abc.tmp", "tiny_lora.safetensors"]  # lock released
    assert oct((out / "tiny_lora.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_lock_holder_is_named_and_files_follow_the_umask(tmp_path):
    with OutputLock(tmp_path) as lock:
        with pytest.raises(UserError, match=rf"another training run is writing to this output_dir \(PID {os.getpid()}, started "):
            OutputLock(tmp_path).acquire()  # a second open file description: flock refuses it
        assert lock.path.exists()
    assert not (tmp_path / LOCK_NAME).exists()

    from library.file_io import save_safetensors_atomic, write_text_atomic
    import torch

    from library.training.outputs.train_state import Progress, save_state

    network = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        state = save_state(tmp_path / "x-state", Progress(), network, optimizer,
                           torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640  # mkstemp alone would give 0600
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    assert state.stat().st_mode & 0o777 == 0o750  # mkdtemp alone would give 0700
    assert {f.name: f.stat().st_mode & 0o777 for f in state.iterdir()} == {
        name: 0o640 for name in ("network.safetensors", "optimizer.pt", "scheduler.pt", "rng_and_extra.pt", "train_state.json")}


def test_sigterm_saves_a_state_that_resumes_exactly_and_exits_143(tiny_single_file, train_dir, tmp_path, monkeypatch, capsys):
    """A real SIGTERM delivered to this process during step 3 (the handler runs in the main thread)."""
    from library.training.loop import Trainer

    common = dict(max_train_steps=6, save_state_on_train_end=True, network_dropout=0.1)
    assert _main(tmp_path, tiny_single_file, train_dir, name="ref", **common) == 0
    real_step = Trainer.optimizer_step
    calls = []

    def step_then_signal(self):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self)

    monkeypatch.setattr(Trainer, "optimizer_step", step_then_signal)
    out = tmp_path / "stopped_out"
    assert _main(tmp_path, tiny_single_file, train_dir, name="stopped", **common) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-2] == f"stopped at step 3; state saved in {out / 'tiny_lora-step00000003-state'}"
    assert err[-1].startswith("resume with: python sdxl_train_network.py --config_file ") and err[-1].endswith(f"--resume {out}")
    assert not (out / "tiny_lora.safetensors").exists() and (out / "tiny_lora-step00000003.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    monkeypatch.undo()
    assert _main(tmp_path, tiny_single_file, train_dir, name="stopped", resume=str(out), **common) == 0
    a, b = lora_tensors(tmp_path / "ref_out" / "tiny_lora.safetensors"), lora_tensors(out / "tiny_lora.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.subprocess
def test_ctrl_c_exits_130_with_a_resumable_state_and_the_lock_stops_a_second_run(tiny_single_file, train_dir, tmp_path):
    out = tmp_path / "out"
    config = write_config(tmp_path / "long.toml", base_config(tiny_single_file, train_dir, out, max_train_steps=400,
                                                               train_batch_size=1))
    log = open(tmp_path / "log.txt", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, str(REPO / "sdxl_train_network.py"), "--config_file", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        deadline = time.time() + 240
        while "training 400 steps" not in (tmp_path / "log.txt").read_text() and time.time() < deadline:
            assert process.poll() is None, (tmp_path / "log.txt").read_text()
            time.sleep(0.5)
        assert (out / LOCK_NAME).exists()
        started = time.time()
        with pytest.raises(UserError, match=rf"another training run is writing to this output_dir \(PID {process.pid}, "):
            _main(tmp_path, tiny_single_file, train_dir, output_dir=out, max_train_steps=2)
        assert time.time() - started < 10  # stops at once, long before any model would load
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    lines = (tmp_path / "log.txt").read_text().replace("\r", "\n").strip().splitlines()
    assert lines[-1] == (f"resume with: python sdxl_train_network.py --config_file {config} --resume {out}"), lines[-5:]
    assert lines[-2].startswith("stopped at step ")
    step = int(lines[-2].split()[3].rstrip(";"))
    state = find_state(out)
    assert state.name == f"tiny_lora-step{step:08d}-state" and not (out / LOCK_NAME).exists()
    assert _main(tmp_path, tiny_single_file, train_dir, output_dir=out, max_train_steps=step + 1, resume=str(out)) == 0
    assert (out / "tiny_lora.safetensors").exists()


def _disk_full_under(folder: Path, monkeypatch) -> None:
    """Writes into `folder` fail as on a full disk (LoRA and state files; samples too)."""
    import safetensors.torch

    import library.training.outputs.train_state as train_state

    real_save_file, real_torch_save = safetensors.torch.save_file, torch.save

    def full(path):
        return str(path).startswith(str(folder))

    def save_file(tensors, path, *args, **kwargs):
        if full(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path, *args, **kwargs)

    def torch_save(obj, path, *args, **kwargs):
        if full(path):  # what torch really raises on a full disk: no errno, no mention of space
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return real_torch_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(train_state, "save_file", save_file)
    monkeypatch.setattr(torch, "save", torch_save)


def test_a_failed_save_retries_then_rescues_the_weights_and_exits_non_zero(tiny_single_file, train_dir, tmp_path, monkeypatch):
    import library.training.outputs.save_rescue as save_rescue

    common = dict(max_train_steps=4, save_every_n_steps=2, save_state=True)
    assert _main(tmp_path, tiny_single_file, train_dir, name="ref", **common) == 0
    monkeypatch.setattr(save_rescue, "RETRY_DELAY", 0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = tmp_path / "full_out"
    _disk_full_under(out, monkeypatch)
    with pytest.raises(save_rescue.SaveFailed, match=rf"saving into {out} failed twice \(no space left on the disk; .* free in "
                                                     rf"{out}\); the trained weights were saved to {tmp_path}/home/sdxl_lora_rescue/"
                                                     r"tiny_lora-\d+-\d+/tiny_lora-step00000002\.safetensors instead") as caught:
        _main(tmp_path, tiny_single_file, train_dir, name="full", **common)
    monkeypatch.undo()
    rescued = caught.value.rescued
    assert sorted(p.name for p in rescued.iterdir()) == ["tiny_lora-step00000002-state", "tiny_lora-step00000002.safetensors"]
    assert not [p for p in out.iterdir() if not p.name.startswith(".")] and not list(out.glob(".*.tmp"))  # nothing half-written
    # nothing lost: resuming from the rescued state ends exactly where the uninterrupted run ended
    assert _main(tmp_path, tiny_single_file, train_dir, name="resumed", resume=str(rescued), **common) == 0
    a, b = lora_tensors(tmp_path / "ref_out" / "tiny_lora.safetensors"), lora_tensors(tmp_path / "resumed_out" / "tiny_lora.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_retry_succeeds_and_no_fallback_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from library.file_io import WriteFailed
    from library.training.outputs import save_rescue

    monkeypatch.setattr(save_rescue, "RETRY_DELAY", 0)
    attempts = []

    def flaky(folder):
        attempts.append(folder)
        if len(attempts) == 1:
            raise WriteFailed(folder / "x", "permission denied")
        return folder / "x"

    assert save_rescue.save_or_rescue(flaky, tmp_path, "x") == tmp_path / "x" and attempts == [tmp_path, tmp_path]
    assert "retrying in 0 s" in capsys.readouterr().out

    def always(folder):
        raise OSError(errno.EROFS, "Read-only file system")

    with pytest.raises(save_rescue.SaveFailed, match=r"failed twice \(Read-only file system\) and no fallback folder could take"):
        save_rescue.save_or_rescue(always, tmp_path, "x")


def test_free_space_is_checked_before_training_against_what_the_saves_take(tiny_single_file, train_dir, tmp_path, monkeypatch):
    import library.training.outputs.preflight as preflight

    estimates = []
    real_check = preflight.check_free_space
    monkeypatch.setattr(preflight, "check_free_space", lambda *a, **k: estimates.append(real_check(*a, **k)) or estimates[-1])
    common = dict(max_train_steps=4, save_every_n_steps=2, save_state=True)
    assert _main(tmp_path, tiny_single_file, train_dir, name="sized", **common) == 0
    out = tmp_path / "sized_out"
    loras = sorted(out.glob("*.safetensors"))
    states = sorted(out.glob("*-state"))
    assert [p.name for p in loras] == ["tiny_lora-step00000002.safetensors", "tiny_lora.safetensors"]
    assert [p.name for p in states] == ["tiny_lora-state", "tiny_lora-step00000002-state"]
    estimate = estimates[0]
    assert (estimate["loras"], estimate["states"]) == (2, 3)  # 2 states kept + 1 being written beside the last
    lora_size = max(p.stat().st_size for p in loras)
    state_size = max(sum(f.stat().st_size for f in s.iterdir()) for s in states)
    assert lora_size <= estimate["lora_bytes"] <= 1.1 * lora_size, (lora_size, estimate)
    assert state_size <= estimate["state_bytes"] <= 1.1 * state_size, (state_size, estimate)

    monkeypatch.setattr(preflight, "free_bytes", lambda folder: estimate["total"] - 1)
    with pytest.raises(UserError, match=r"^output_dir .*short_out has .* free, but this run will write about .* there \(2 LoRA "
                                        r"file\(s\) of 1\.\d MB and 3 training state\(s\) of \d\.\d MB\); free some space, keep fewer "
                                        r"saves \(save_last_n_epochs"):
        _main(tmp_path, tiny_single_file, train_dir, name="short", **common)
    assert not list((tmp_path / "short_out").glob("*.safetensors")) and not list((tmp_path / "short_out").glob("*-state"))


def test_without_flock_the_pid_decides(tmp_path, monkeypatch):
    import library.training.outputs.output_lock as output_lock

    monkeypatch.setattr(output_lock, "fcntl", None)  # e.g. Windows or a mount without flock
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f'{{"pid": {alive.pid}, "host": "{os.uname().nodename}"}}')
        with pytest.raises(UserError, match=rf"another training run is writing to this output_dir \(PID {alive.pid}\)"):
            OutputLock(tmp_path).acquire()
    finally:
        alive.kill()
        alive.wait()
    notices = []
    with OutputLock(tmp_path, notices):
        assert notices == [f"{tmp_path}: took over the lock of an earlier run (PID {alive.pid}) that is no longer running"]
    (tmp_path / LOCK_NAME).write_text('{"pid": 1, "host": "another-machine"}')
    with pytest.raises(UserError, match=r"\(PID 1, on another-machine\); .* \(if that run is gone, delete"):
        OutputLock(tmp_path).acquire()


def test_abandoned_temporaries_beside_caches_are_swept_once_per_folder(tmp_path):
    """A SIGKILL during a cache write leaves `.<cache>.<random>.tmp` beside the dataset images; the
    next write into that folder removes it once it is over an hour old, and nothing else."""
    from library import file_io

    folder = tmp_path / "10_ohwx"
    folder.mkdir()
    old = folder / ".a_0064x0064_sdxl.npz.k3j_x9q2.tmp"
    fresh = folder / ".b_0064x0064_sdxl.npz.ab12cd34.tmp"  # a live writer's, maybe
    user = folder / ".notes.tmp"  # not a name atomic_path makes
    for path in (old, fresh, user):
        path.write_bytes(b"x")
    hours_ago = time.time() - 2 * file_io.ABANDONED_AFTER_S
    os.utime(old, (hours_ago, hours_ago))
    os.utime(user, (hours_ago, hours_ago))
    file_io.write_text_atomic(folder / "a.txt", "caption\n")
    assert sorted(p.name for p in folder.iterdir()) == sorted([fresh.name, user.name, "a.txt"])
    os.utime(fresh, (hours_ago, hours_ago))
    file_io.write_text_atomic(folder / "b.txt", "caption\n")
    assert fresh.exists()  # swept once per folder and process: no directory scan per write


def test_a_folder_where_the_lock_file_goes_is_one_line(tiny_single_file, train_dir, tmp_path, capsys, no_model_load):
    from library.entry import run_cli
    from sdxl_train_network import main

    out = tmp_path / "out"
    (out / LOCK_NAME).mkdir(parents=True)
    (out / LOCK_NAME / "note.txt").write_text("made by a sync tool")
    config = write_config(tmp_path / "c.toml", base_config(tiny_single_file, train_dir, out))
    capsys.readouterr()
    assert run_cli(main, ["--config_file", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"error: {out / LOCK_NAME}: is a folder, but this is the output_dir lock file of training runs; remove the folder "
        f"(rmdir {out / LOCK_NAME}) or choose another output_dir"]
    assert sorted(p.name for p in out.rglob("*")) == [LOCK_NAME, "note.txt"]  # never ours to delete
    assert (out / LOCK_NAME / "note.txt").read_text() == "made by a sync tool"
