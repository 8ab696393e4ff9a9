"""Text-encoder state dicts: Hugging Face CLIP <-> the layouts of original SDXL checkpoints.

TE1 (CLIP ViT-L) is stored in HF naming under `conditioner.embedders.0.transformer.` with the
`text_model.` level. transformers 5's CLIPTextModel has no such level in memory, so it is added on
save and removed on load. TE2 (OpenCLIP ViT-bigG) is stored in OpenCLIP naming under
`conditioner.embedders.1.model.`: fused q/k/v (`in_proj_weight`), and `text_projection` as P with
pooled = x @ P, i.e. the transpose of HF's Linear weight.
"""
from __future__ import annotations

import torch

TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."

_OPENCLIP_LAYER_PARTS = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def te1_to_checkpoint(state_dict: dict) -> dict:
    """CLIPTextModel state dict (with or without `text_model.`) -> checkpoint keys with TE1_PREFIX."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key
        out[TE1_PREFIX + key] = value
    return out


def te1_from_checkpoint(state_dict: dict, model_has_text_model_level: bool = False) -> dict:
    """Keys under TE1_PREFIX -> CLIPTextModel state dict in the in-memory naming of this transformers."""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(TE1_PREFIX) or key.endswith("position_ids"):
            continue
        key = key[len(TE1_PREFIX):]
        if not model_has_text_model_level and key.startswith("text_model."):
            key = key[len("text_model."):]
        out[key] = value
    return out


def te2_to_checkpoint(state_dict: dict) -> dict:
    """CLIPTextModelWithProjection state dict -> OpenCLIP keys with TE2_PREFIX."""
    out = {}
    sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state_dict.items()}
    out["token_embedding.weight"] = sd["embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["embeddings.position_embedding.weight"]
    out["ln_final.weight"] = sd["final_layer_norm.weight"]
    out["ln_final.bias"] = sd["final_layer_norm.bias"]
    out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    layer = 0
    while f"encoder.layers.{layer}.layer_norm1.weight" in sd:
        hf, oc = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for oc_part, hf_part in _OPENCLIP_LAYER_PARTS.items():
            for suffix in ("weight", "bias"):
                out[f"{oc}{oc_part}.{suffix}"] = sd[f"{hf}{hf_part}.{suffix}"]
        for suffix in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{suffix}"] = torch.cat(
                [sd[f"{hf}self_attn.{p}_proj.{suffix}"] for p in ("q", "k", "v")], dim=0
            )
        layer += 1
    return {TE2_PREFIX + k: v for k, v in out.items()}


def te2_from_checkpoint(state_dict: dict) -> dict:
    """OpenCLIP keys under TE2_PREFIX -> CLIPTextModelWithProjection state dict."""
    sd = {k[len(TE2_PREFIX):]: v for k, v in state_dict.items() if k.startswith(TE2_PREFIX)}
    out = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].t().contiguous(),
    }
    layer = 0
    while f"transformer.resblocks.{layer}.ln_1.weight" in sd:
        hf, oc = f"text_model.encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for oc_part, hf_part in _OPENCLIP_LAYER_PARTS.items():
            for suffix in ("weight", "bias"):
                out[f"{hf}{hf_part}.{suffix}"] = sd[f"{oc}{oc_part}.{suffix}"]
        for suffix in ("weight", "bias"):
            q, k, v = sd[f"{oc}attn.in_proj_{suffix}"].chunk(3, dim=0)
            out[f"{hf}self_attn.q_proj.{suffix}"] = q
            out[f"{hf}self_attn.k_proj.{suffix}"] = k
            out[f"{hf}self_attn.v_proj.{suffix}"] = v
        layer += 1
    return out


# Keys of original checkpoints that no in-memory model holds; kept so a save writes them back.
TE2_EXTRA_KEYS = (TE2_PREFIX + "logit_scale",)
