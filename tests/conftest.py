"""Shared fixtures: the tiny SDXL model is written once per test session and loaded once."""
from __future__ import annotations

import copy

import pytest
import torch

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


@pytest.fixture(scope="session")
def toy_world_dir(tmp_path_factory):
    """The toy world exactly as `python tools/make_toy_world.py` builds it (about two minutes, once)."""
    from tools.toy_world.build import build_world

    folder = tmp_path_factory.mktemp("toy_world")
    build_world(folder, log=lambda message: None, progress=False)
    return folder
