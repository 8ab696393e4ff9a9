"""SIGTERM to a whole job under `accelerate launch`, as a cluster scheduler sends it: accelerate's
one-process launcher dies at once (143) while the trainer it started is still saving its state; the
job-script recipe of docs/training.md waits for that save (tools/wait_for_run.py). A SIGTERM that
arrives twice (the scheduler's and a launcher's forwarded copy) never aborts the save."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from library.training.outputs.output_lock import LOCK_NAME, wait_for_release
from library.training.outputs.run_control import StopRequest
from library.training.outputs.train_state import find_state, read_progress
from tests.training_fixtures import base_config, make_concept_images, write_config

REPO = Path(__file__).resolve().parent.parent


def test_a_repeated_sigterm_keeps_saving_and_a_second_ctrl_c_aborts():
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun forwarding the scheduler's signal to its worker
        assert stop.requested and stop.signum == signal.SIGTERM and stop.exit_code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored before the abort
    finally:
        stop.restore()


def test_wait_for_release_returns_when_the_holder_ends(tmp_path):
    assert wait_for_release(tmp_path) is None and not (tmp_path / LOCK_NAME).exists()  # nothing held, nothing created
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from library.training.outputs.output_lock import OutputLock\n"
        "lock = OutputLock(%r).acquire(); print('held', flush=True); time.sleep(1.5)") % (str(REPO), str(tmp_path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception, match=r"still running after 0\.2 s"):
            wait_for_release(tmp_path, timeout=0.2)
        started = time.monotonic()
        info = wait_for_release(tmp_path, timeout=30)
        assert info["pid"] == holder.pid and holder.poll() is not None  # returned once the holder had exited
        assert 0.5 < time.monotonic() - started < 10
    finally:
        holder.kill()
        holder.wait()


JOB_SCRIPT = """\
trap 'echo "job script: SIGTERM, waiting for the trainer to save"' TERM
{launch} sdxl_train_network.py --config_file {config}
status=$?
echo "job script: launcher exited with $status"
{python} tools/wait_for_run.py {output_dir}
echo "job script: done"
exit $status
"""


@pytest.mark.subprocess
def test_sigterm_to_an_accelerate_launch_job_the_recipe_waits_for_the_save(tiny_single_file, tmp_path):
    data = tmp_path / "data"
    make_concept_images(data / "2_catwomen", count=4)
    out = tmp_path / "out"
    config = write_config(tmp_path / "long.toml", base_config(tiny_single_file, data, out, max_train_steps=400, train_batch_size=1))
    launch = (f"{shlex.quote(sys.executable)} -m accelerate.commands.launch --quiet --num_processes 1 --num_machines 1 "
              "--mixed_precision no --dynamo_backend no")
    script = tmp_path / "job.sh"
    script.write_text(JOB_SCRIPT.format(launch=launch, config=shlex.quote(str(config)), python=shlex.quote(sys.executable),
                                        output_dir=shlex.quote(str(out))))
    log_path = tmp_path / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(log_path, "w") as log:
        job = subprocess.Popen(["bash", str(script)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                               start_new_session=True)  # its own process group, as a scheduler's job step
    try:
        deadline = time.time() + 240
        while "training 400 steps" not in log_path.read_text() and time.time() < deadline:
            assert job.poll() is None, log_path.read_text()
            time.sleep(0.5)
        time.sleep(1.0)  # a few steps in
        os.killpg(job.pid, signal.SIGTERM)  # the scheduler: every process of the job
        assert job.wait(timeout=120) == 143
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    lines = [line.strip() for line in log_path.read_text().replace("\r", "\n").splitlines() if line.strip()]
    launcher = lines.index("job script: launcher exited with 143")
    stopped = next(i for i, line in enumerate(lines) if line.startswith("stopped at step "))
    assert launcher < stopped, lines[-12:]  # accelerate's launcher did not wait for the trainer's save ...
    assert lines[-1] == "job script: done" and lines[-2].startswith(f"the training run in {out} (PID ")  # ... the recipe did
    step = int(lines[stopped].split()[3].rstrip(";"))
    state = find_state(out)
    assert state.name == f"tiny_lora-step{step:08d}-state" and read_progress(state).global_step == step
    assert (out / f"tiny_lora-step{step:08d}.safetensors").exists() and not (out / LOCK_NAME).exists()
