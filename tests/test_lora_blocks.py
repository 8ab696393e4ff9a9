"""Block dims, block lr weights, LoRA+ groups and the sshs hashes."""
from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from library.lora.metadata import build_modelspec, build_training_metadata, model_hash_of_file
from library.lora.network_args import sdxl_block_index
from networks import lora


@pytest.fixture
def model(_tiny_sdxl_loaded):
    return _tiny_sdxl_loaded  # networks are only created here, never applied


def test_block_dims_choose_rank_per_block(model):
    dims = [0] * 23
    dims[5], dims[11], dims[13] = 2, 4, 8  # input_blocks_4, middle_block_1, output_blocks_0
    alphas = [1.0] * 23
    alphas[13] = 16.0
    network = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet,
                                  block_dims=",".join(map(str, dims)), block_alphas=",".join(map(str, alphas)))
    ranks = {lo.lora_name: lo.lora_dim for lo in network.unet_loras}
    assert {sdxl_block_index(n) for n in ranks} == {5, 11, 13}
    assert all(r == dims[sdxl_block_index(n)] for n, r in ranks.items())
    assert ranks["lora_unet_input_blocks_4_1_proj_in"] == 2
    assert ranks["lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k"] == 4
    out0 = next(lo for lo in network.unet_loras if lo.lora_name == "lora_unet_output_blocks_0_1_proj_out")
    assert out0.scale == 16.0 / 8
    # All transformer modules of those blocks are there; text encoders keep network_dim.
    full = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet)
    assert set(ranks) == {lo.lora_name for lo in full.unet_loras if sdxl_block_index(lo.lora_name) in (5, 11, 13)}
    assert {lo.lora_dim for lo in network.text_encoder_loras} == {4}
    # conv_block_dims add the ResNet convs per block (in_layers_2 of input_blocks_1 is block 2).
    conv_dims = ["0"] * 23
    conv_dims[2] = "3"
    with_conv = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet,
                                    block_dims=",".join(map(str, dims)), conv_block_dims=",".join(conv_dims))
    conv_names = {lo.lora_name: lo.lora_dim for lo in with_conv.unet_loras if sdxl_block_index(lo.lora_name) == 2}
    assert conv_names == {"lora_unet_input_blocks_1_0_in_layers_2": 3, "lora_unet_input_blocks_1_0_out_layers_3": 3}


def test_block_lr_weights_make_groups_per_block(model):
    network = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet,
                                  down_lr_weight="zeros", mid_lr_weight="1,0.5,1", up_lr_weight="sine+0.1",
                                  block_lr_zero_threshold="0.2")
    blocks = {sdxl_block_index(lo.lora_name) for lo in network.unet_loras}
    # zeros: no module in input blocks; sine+0.1 is 0.1 <= 0.2 at output_blocks_0 (block 13), so none
    # there; the tiny UNet has transformer blocks in output_blocks_0..5 (blocks 13-18).
    sine = [math.sin(math.pi / 2 * i / 8) + 0.1 for i in range(9)]
    assert blocks == {11, 14, 15, 16, 17, 18}
    groups, descriptions = network.prepare_optimizer_params(text_encoder_lr=1e-5, unet_lr=1e-4, default_lr=1e-3)
    assert descriptions[0] == "textencoder" and groups[0]["lr"] == 1e-5
    by_desc = dict(zip(descriptions, groups))
    assert by_desc["unet_block11"]["lr"] == pytest.approx(1e-4 * 0.5)
    for block in blocks - {11}:
        assert by_desc[f"unet_block{block}"]["lr"] == pytest.approx(1e-4 * sine[block - 13])
    n_params = sum(len(list(g["params"])) for g in groups)
    assert n_params == len(list(network.parameters()))


def test_block_lr_zero_threshold_applies_to_the_given_lists_only():
    """kohya thresholds the lists it was given (their 1.0 fill included), not the lists left out nor
    the embedding and output blocks."""
    from library.lora.network_args import block_lr_weights, down_up_lr_weight, mid_lr_weight

    weights = block_lr_weights(down_up_lr_weight("0.5,2"), None, None, zero_threshold=1.0)  # filled to 9 with 1.0
    assert weights == [1.0] + [0.0, 2.0] + [0.0] * 7 + [1.0] * 3 + [1.0] * 9 + [1.0]
    assert block_lr_weights(None, mid_lr_weight("0.1,0.3,0.5"), None, zero_threshold=0.2) == [1.0] * 10 + [0.0, 0.3, 0.5] + [1.0] * 10


def test_loraplus_puts_lora_up_in_its_own_group(model):
    network = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet,
                                  loraplus_unet_lr_ratio="16", loraplus_lr_ratio="4")
    groups, descriptions = network.prepare_optimizer_params(text_encoder_lr=[1e-5, 2e-5], unet_lr=1e-4)
    assert descriptions == ["textencoder 1", "textencoder 1 plus", "textencoder 2", "textencoder 2 plus",
                            "unet", "unet plus"]
    lrs = [g["lr"] for g in groups]
    assert lrs == pytest.approx([1e-5, 4e-5, 2e-5, 8e-5, 1e-4, 1.6e-3])
    up_ids = {id(lo.lora_up.weight) for lo in network.loras}
    for group, description in zip(groups, descriptions):
        ids = {id(p) for p in group["params"]}
        assert (ids <= up_ids) if description.endswith("plus") else not (ids & up_ids)
    assert sum(len(list(g["params"])) for g in groups) == 2 * len(network.loras)


def _rewrite_header(path, metadata_update: dict) -> None:
    """Edit a safetensors file's metadata in place, leaving the tensor bytes as they are."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"].update(metadata_update)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n:])


def test_model_hash_ignores_metadata_and_sees_every_tensor_byte(model, tmp_path):
    from safetensors import safe_open

    network = lora.create_network(1.0, 4, 1, None, model.text_encoders, model.unet)
    meta = build_training_metadata(network_module="networks.lora", network_dim=4, network_alpha=1.0,
                                   output_name="x", steps=10, epoch=1, seed=42, tag_frequency={"a": {"cat": 2}})
    meta.update(build_modelspec(title="x", trigger_phrase="sks"))
    path = tmp_path / "h.safetensors"
    written = network.save_weights(path, torch.float16, meta)
    with safe_open(str(path), "pt") as handle:
        stored = handle.metadata()
    assert stored == written
    assert stored["ss_base_model_version"] == "sdxl_base_v1-0" and stored["ss_network_dim"] == "4"
    assert json.loads(stored["ss_tag_frequency"]) == {"a": {"cat": 2}}
    assert stored["modelspec.sai_model_spec"] == "1.0.1"
    assert stored["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert all(isinstance(v, str) for v in stored.values())
    original = stored["sshs_model_hash"]
    assert model_hash_of_file(path) == original

    _rewrite_header(path, {"ss_output_name": "renamed", "modelspec.title": "a much longer title " * 5})
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["ss_output_name"] == "renamed"
    assert model_hash_of_file(path) == original

    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor
    path.write_bytes(bytes(data))
    assert model_hash_of_file(path) != original
