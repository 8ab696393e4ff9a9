"""Shared fixtures: the tiny SDXL model is written once per test session and loaded once."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# The tiny model's ops are microseconds long: a second intra-op thread costs more in
# synchronisation than it saves (measured 0.05 s vs up to 1.5 s per UNet forward on a busy
# 2-core machine), so the suite runs single-threaded.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """Folder with diffusers/ and sdxl_tiny.safetensors (seed 0)."""
    from library.models.tiny_sdxl import write_tiny_sdxl

    folder = tmp_path_factory.mktemp("tiny_sdxl")
    write_tiny_sdxl(folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_single_file(tiny_sdxl_dir):
    from library.models.tiny_sdxl import SINGLE_FILE_NAME

    return tiny_sdxl_dir / SINGLE_FILE_NAME


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tiny_sdxl_dir):
    return tiny_sdxl_dir / "diffusers"


@pytest.fixture(scope="session")
def _tiny_sdxl_loaded(tiny_single_file):
    from library.models.sdxl_loader import load_sdxl

    return load_sdxl(tiny_single_file)


@pytest.fixture
def tiny_sdxl(_tiny_sdxl_loaded):
    """A fresh copy of the loaded tiny model (tests may modify it)."""
    return copy.deepcopy(_tiny_sdxl_loaded)


TOY_WORLD_FIXTURE = "toy_world_dir"


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    """Tests that need the toy world or the pretend-CUDA runs go last: the toy world's build (about two
    minutes of one core) and the pretend-CUDA worker (about five) run in background processes while
    the rest of the suite, single-threaded, uses the other core."""
    toy_world = [item for item in items if TOY_WORLD_FIXTURE in getattr(item, "fixturenames", ())]
    cuda_sim = [item for item in items if CUDA_SIM_FIXTURE in getattr(item, "fixturenames", ()) and item not in toy_world]
    items[:] = [item for item in items if item not in toy_world and item not in cuda_sim] + cuda_sim + toy_world
    config.stash[_TOY_WORLD_WANTED] = bool(toy_world)
    config.stash[_CUDA_SIM_WANTED] = sorted({name for item in cuda_sim for name in _scenarios_of(item)})


def _scenarios_of(item) -> list[str]:
    """The pretend-CUDA scenarios a test reads (its `scenario` parameter, or its cuda_sim_scenarios marker)."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "scenario" in callspec.params:
        return [callspec.params["scenario"]]
    marker = item.get_closest_marker("cuda_sim_scenarios")
    return list(marker.args) if marker else []


_TOY_WORLD_WANTED = pytest.StashKey[bool]()
_CUDA_SIM_WANTED = pytest.StashKey[list]()
CUDA_SIM_FIXTURE = "cuda_sim_results"


@pytest.fixture(scope="session", autouse=True)
def _toy_world_build(request, tmp_path_factory):
    """Starts `python tools/make_toy_world.py` at the beginning of the session when a selected test needs it."""
    if not request.config.stash.get(_TOY_WORLD_WANTED, False):
        yield None
        return
    folder = tmp_path_factory.mktemp("toy_world")
    log = open(folder.parent / "toy_world_build.log", "w", encoding="utf-8")
    command = [sys.executable, str(REPO / "tools" / "make_toy_world.py"), "--output_dir", str(folder)]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    yield {"folder": folder, "process": process, "log": folder.parent / "toy_world_build.log"}
    if process.poll() is None:  # the session ended (or was interrupted) before a toy-world test ran
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope="session")
def toy_world_dir(_toy_world_build):
    """The toy world exactly as `python tools/make_toy_world.py` builds it (about two minutes, once)."""
    process = _toy_world_build["process"]
    if process.wait(timeout=3600) != 0:
        tail = "\n".join(_toy_world_build["log"].read_text(encoding="utf-8").splitlines()[-20:])
        pytest.fail(f"tools/make_toy_world.py failed (exit {process.returncode}):\n{tail}")
    return _toy_world_build["folder"]


class CudaSimResults:
    """The pretend-CUDA worker's results (tests/cuda_sim/worker.py), read as each scenario finishes."""

    def __init__(self, folder: Path, process, log: Path):
        self.folder, self.process, self.log = folder, process, log

    def result(self, name: str, timeout: float = 1800) -> dict:
        import json
        import time

        path = self.folder / f"{name}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process.poll() is not None and not path.exists():
                tail = "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
                pytest.fail(f"the pretend-CUDA worker ended (exit {self.process.returncode}) without {name}:\n{tail}")
            if time.monotonic() > deadline:
                pytest.fail(f"pretend-CUDA scenario {name} did not finish within {timeout:.0f} s")
            time.sleep(0.5)
        return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session", autouse=True)
def _cuda_sim_worker(request, tmp_path_factory):
    """Starts the pretend-CUDA worker at the beginning of the session for the scenarios selected tests read."""
    scenarios = request.config.stash.get(_CUDA_SIM_WANTED, [])
    if not scenarios:
        yield None
        return
    folder = tmp_path_factory.mktemp("cuda_sim")
    log_path = folder.parent / "cuda_sim_worker.log"
    log = open(log_path, "w", encoding="utf-8")
    command = [sys.executable, str(REPO / "tests" / "cuda_sim" / "worker.py"), "--output_dir", str(folder), *scenarios]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    yield CudaSimResults(folder, process, log_path)
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope="session")
def cuda_sim_results(_cuda_sim_worker):
    return _cuda_sim_worker
