"""Other libraries' known-harmless messages stay out of the terminal, and bitsandbytes is not run
unless an 8-bit optimizer uses it (library/third_party.py)."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_known_noise_is_filtered_and_other_messages_are_not(capsys):
    import library  # noqa: F401  (installs the filters)

    handler_output = []
    handler = logging.Handler()
    handler.emit = lambda record: handler_output.append(record.getMessage())
    for name, text in (("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community: x"),
                       ("transformers.utils.import_utils", "`CLIPImageProcessor` requires torchvision (not installed); ...")):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning(text)
            logger.warning("a message that matters")
        finally:
            logger.removeHandler(handler)
    assert handler_output == ["a message that matters", "a message that matters"]


def test_deferred_module_runs_at_first_use(tmp_path, monkeypatch):
    import library.third_party as third_party

    package = tmp_path / "deferred_probe"
    package.mkdir()
    (package / "__init__.py").write_text("import builtins\nbuiltins.probe_runs = getattr(builtins, 'probe_runs', 0) + 1\nVALUE = 7\n")
    (package / "sub.py").write_text("from deferred_probe import VALUE\nDOUBLE = 2 * VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(third_party, "LAZY_MODULES", ("deferred_probe",))
    import builtins

    for _ in range(2):  # a second import (as every library does) must not run it either
        import deferred_probe
    assert getattr(builtins, "probe_runs", 0) == 0 and isinstance(deferred_probe, third_party._DeferredModule)
    assert deferred_probe.VALUE == 7 and builtins.probe_runs == 1
    import deferred_probe.sub

    assert deferred_probe.sub.DOUBLE == 14 and builtins.probe_runs == 1
    with pytest.raises(AttributeError, match="has no attribute 'missing'"):
        deferred_probe.missing
    for name in ("deferred_probe", "deferred_probe.sub"):
        sys.modules.pop(name, None)
    del builtins.probe_runs


@pytest.mark.subprocess
def test_bitsandbytes_is_not_run_by_diffusers_or_peft():
    code = ("import sys, library, diffusers.models.modeling_utils, peft.helpers; "
            "print('bitsandbytes' in sys.modules, 'bitsandbytes._ops' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.split() == ["True", "False"], result.stderr[-2000:]  # imported (bound) but never run
    assert "requires torchvision" not in result.stderr
