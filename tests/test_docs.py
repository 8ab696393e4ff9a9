"""The documentation stays true: the options reference is generated from the code, every command in
README.md and docs/ names scripts, options and files that exist, and the README's demo command works."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_options_reference_is_generated_from_the_code():
    from tools.make_options_doc import main

    assert main(["--check"]) == 0, "run: python tools/make_options_doc.py"


_COMMAND_STARTS = ("python ", "accelerate ", "bash ", "pip ")


def shell_commands(path: Path) -> list[str]:
    """Commands in code blocks (```bash, ```sh or untagged), continuation lines joined, comments
    dropped; untagged blocks contribute only lines that start like a command."""
    commands = []
    for language, block in re.findall(r"```(\w*)\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S):
        if language not in ("", "bash", "sh", "shell"):
            continue
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            if not line or line.startswith("#") or (not language and not line.startswith(_COMMAND_STARTS)):
                continue
            commands.extend(part.strip() for part in line.split("&&"))
    return commands


def _help_text(script: Path) -> str:
    spec = importlib.util.spec_from_file_location(f"doc_check_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


ALL_COMMANDS = [(doc, command) for doc in DOCS for command in shell_commands(doc)]


def test_docs_contain_commands():
    assert len(ALL_COMMANDS) >= 15


@pytest.mark.parametrize("doc,command", ALL_COMMANDS, ids=[f"{d.name}:{c[:50]}" for d, c in ALL_COMMANDS])
def test_documented_command_names_real_scripts_options_and_files(doc, command):
    words = shlex.split(command)
    if words[:2] == ["pip", "install"]:
        for requirement in words[2:]:
            if requirement.endswith(".txt"):
                assert (REPO / requirement).exists()
        return
    if words[0] in ("cd", "tensorboard") or words[:3] == ["python", "-m", "pytest"]:
        return
    if words[0] == "bash":
        script = REPO / words[1]
        assert script.exists(), f"{doc.name}: {words[1]} does not exist"
        if script.name == "SDXL_fintune_LoRA.sh" and len(words) > 2:
            assert (REPO / "train_config" / words[2] / "config_file.toml").exists()
        return
    if words[:2] == ["accelerate", "launch"]:
        scripts = [i for i, w in enumerate(words) if w.endswith(".py")]
        assert scripts, command
        launch_options, words = words[2 : scripts[0]], words[scripts[0] :]
        config = launch_options[launch_options.index("--config_file") + 1] if "--config_file" in launch_options else None
        if config:
            assert (REPO / config).exists(), f"{doc.name}: {config} does not exist"
        words = ["python", *words]
    assert words[0] == "python", f"{doc.name}: unexpected command {command!r}"
    script = REPO / words[1]
    assert script.exists(), f"{doc.name}: {words[1]} does not exist"
    help_text = _help_text(script)
    for word in words[2:]:
        if word.startswith("--"):
            option = word.split("=")[0]
            assert re.search(rf"(^|\s|\[){re.escape(option)}(\s|=|\]|,|$)", help_text, flags=re.M), f"{doc.name}: {script.name} has no {option}"
        elif word.startswith("train_config/"):
            assert (REPO / word).exists(), f"{doc.name}: {word} does not exist"


@pytest.mark.slow
def test_readme_demo_command_produces_every_artefact(tmp_path, toy_world_dir):
    """README's first command, minus the install: the demo end to end, in a fresh output folder. The
    session's toy world is copied in first, so the demo's first step shows that a built world is reused."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "pip install -r requirements.txt && bash tools/quickstart.sh" in readme
    demo = tmp_path / "demo"
    shutil.copytree(toy_world_dir, demo / "toy_world")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(["bash", str(REPO / "tools" / "quickstart.sh"), str(demo)], capture_output=True,
                            text=True, cwd=REPO, env=env, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "reusing the base model" in result.stdout
    assert (demo / "lora" / "zkz_demo.safetensors").exists()
    assert list((demo / "lora" / "sample").glob("*.png"))
    assert list((demo / "logs").rglob("events.out.tfevents.*"))
    assert list((demo / "lora").glob("*-state"))
    meta = json.loads((demo / "meta_lat.json").read_text())
    assert all(entry["tags"].startswith("zkz") and "cyan" not in entry["tags"] for entry in meta.values())
    from PIL import Image

    grid = Image.open(demo / "lora_weight_grid.png")
    assert grid.size[1] > 3 * 64 and grid.size[0] > 6 * 64  # 6 weights across, 3 seeds down, plus labels
