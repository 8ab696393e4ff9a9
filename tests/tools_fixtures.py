"""Helpers for the LoRA tool tests: LoRA files with non-trivial weights on the tiny model."""
from __future__ import annotations

import copy

import torch
from safetensors import safe_open

from networks import lora
from tests.lora_fixtures import quiet_lycoris_logging, randomise_network, te_out, token_ids, unet_inputs, unet_out

quiet_lycoris_logging()  # at import, outside any test's output capture


class Parts:
    """The UNet and text encoders of a model, copied (cheaper than deep-copying the whole model)."""

    def __init__(self, model):
        self.unet = copy.deepcopy(model.unet)
        self.text_encoder1 = copy.deepcopy(model.text_encoder1)
        self.text_encoder2 = copy.deepcopy(model.text_encoder2)

    @property
    def text_encoders(self):
        return [self.text_encoder1, self.text_encoder2]


def write_lora(model, path, seed=1, dim=4, alpha=2.0, std=0.1, **args) -> str:
    """A networks.lora file (LoRA, or LoCon with conv_dim) with random weights, on a copy of `model`."""
    work = Parts(model)
    network = lora.create_network(1.0, dim, alpha, None, work.text_encoders, work.unet, **args)
    network.apply_to(work.text_encoders, work.unet, True, True)
    randomise_network(network, seed=seed, std=std)
    network.save_weights(path, torch.float32, {"ss_network_module": "networks.lora", "ss_network_dim": str(dim),
                                               "ss_network_alpha": str(alpha), "ss_output_name": "test"})
    return str(path)


def write_lycoris(model, path, algo, seed=7, std=0.1, **args) -> str:
    from networks import lycoris_kohya

    work = Parts(model)
    network = lycoris_kohya.create_network(1.0, 4, 2.0, None, work.text_encoders, work.unet, algo=algo, **args)
    network.apply_to(work.text_encoders, work.unet, True, True)
    randomise_network(network, seed=seed, std=std)
    network.save_weights(path, torch.float32, {"ss_network_module": "lycoris.kohya"})
    return str(path)


def read(path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}


def outputs(model, seed=5):
    """(UNet output, TE1 output, TE2 output) on fixed inputs."""
    ids = token_ids(seed=seed)
    return (unet_out(model.unet, unet_inputs(seed=seed)), te_out(model.text_encoder1, ids),
            te_out(model.text_encoder2, ids))


def assert_outputs_close(got, want, base=None, tol=1e-4):
    for index, (g, w) in enumerate(zip(got, want)):
        if base is not None:  # the change must be visible, or agreement proves nothing
            assert (w - base[index]).abs().max() > 1e-3, f"output {index} unchanged by the LoRA"
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def run_tool(module, argv, capsys=None):
    """Run a CLI's main() through run_cli; returns (exit code, stdout, stderr)."""
    from library.entry import run_cli

    code = run_cli(module.main, argv)
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err
