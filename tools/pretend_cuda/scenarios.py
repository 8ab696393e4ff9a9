"""The GPU option families: what GPU users' runs look like, each a training (or generation) run of a
few steps with a sample, validation and a save, on a small SDXL-shaped model.

A scenario is options on top of a base config and a dataset kind. The suite runs every one on
pretend CUDA (tests/cuda_sim/worker.py, checked by tests/test_cuda_sim.py); tools/gpu_check.sh runs
the training ones on a real GPU, where kernels, memory and speed show too.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    options: dict = field(default_factory=dict)
    data: str = "plain"  # plain | masks (conditioning_data_dir) | preservation (diff_output_preservation) | multiplier
    kind: str = "train"  # train | resume | offload_equivalence | generate | planted_cpu_tensor | device_rules
    samples: bool = True
    validation: bool = True


LOHA = {"network_module": "lycoris.kohya", "network_args": ["algo=loha", "preset=attn-mlp"]}
PIVOTAL = {"train_text_encoder_ti": True, "train_text_encoder_ti_frac": 1.0, "optimizer_type": "Prodigy", "learning_rate": 1.0}

SCENARIOS: dict[str, Scenario] = {
    # precision
    "fp32": Scenario(),
    "fp16": Scenario({"mixed_precision": "fp16"}),
    "bf16": Scenario({"mixed_precision": "bf16"}),
    "full_fp16": Scenario({"mixed_precision": "fp16", "full_fp16": True}),
    "full_bf16": Scenario({"mixed_precision": "bf16", "full_bf16": True}),
    "fp8_base": Scenario({"mixed_precision": "bf16", "fp8_base": True}),
    "gradient_checkpointing": Scenario({"mixed_precision": "fp16", "gradient_checkpointing": True}),
    "cpu_offload_checkpointing": Scenario({"mixed_precision": "bf16", "gradient_checkpointing": True,
                                           "cpu_offload_checkpointing": True}),
    # caching
    "uncached_latents_and_text": Scenario({"cache_latents": False, "mixed_precision": "bf16"}),
    "text_cache_to_disk": Scenario({"cache_text_encoder_outputs": True, "cache_text_encoder_outputs_to_disk": True,
                                    "cache_latents_to_disk": True, "network_train_unet_only": True, "mixed_precision": "fp16"}),
    "text_encoder_lora": Scenario({"network_train_unet_only": False, "text_encoder_lr": 1e-4, "mixed_precision": "fp16",
                                   "gradient_checkpointing": True}),
    # networks
    "pivotal_prodigy": Scenario({**PIVOTAL, "mixed_precision": "bf16"}),
    "lycoris_loha_fp8": Scenario({**LOHA, "mixed_precision": "bf16", "fp8_base": True}),
    "dylora_full_fp16": Scenario({"network_module": "networks.dylora", "network_args": ["unit=2"], "mixed_precision": "fp16",
                                  "full_fp16": True}),
    # noise and loss
    "ip_noise_gamma": Scenario({"ip_noise_gamma": 0.1}),
    "ip_noise_gamma_random_strength": Scenario({"ip_noise_gamma": 0.1, "ip_noise_gamma_random_strength": True,
                                                "mixed_precision": "fp16"}),
    "noise_offset": Scenario({"noise_offset": 0.05, "noise_offset_random_strength": True, "adaptive_noise_scale": 0.01}),
    "multires_noise": Scenario({"multires_noise_iterations": 6, "multires_noise_discount": 0.3, "mixed_precision": "bf16"}),
    "v_pred_zero_terminal_snr": Scenario({"v_parameterization": True, "zero_terminal_snr": True}),
    "min_snr_huber": Scenario({"min_snr_gamma": 5.0, "loss_type": "huber", "huber_schedule": "snr", "huber_c": 0.1,
                               "mixed_precision": "fp16"}),
    "debiased_smooth_l1": Scenario({"debiased_estimation_loss": True, "loss_type": "smooth_l1", "huber_schedule": "exponential"}),
    "masked_loss_conditioning": Scenario({"masked_loss": True, "mixed_precision": "bf16"}, data="masks"),
    "diff_output_preservation": Scenario({"mixed_precision": "fp16"}, data="preservation"),
    "dataset_network_multiplier": Scenario({}, data="multiplier"),
    # resume with dropout: bit-identical to the run it continues (needs the CUDA RNG in the state)
    "resume_with_dropout": Scenario({"network_dropout": 0.1, "network_args": ["rank_dropout=0.2", "module_dropout=0.1"]},
                                    kind="resume", samples=False, validation=False),
    # cpu_offload_checkpointing holds block inputs in host memory: the same LoRA as plain checkpointing
    # (SGD: Adam would magnify the last-bit differences of gradients summed in another order)
    "offload_equals_checkpointing": Scenario({"gradient_checkpointing": True, "optimizer_type": "SGDNesterov", "learning_rate": 0.5},
                                             kind="offload_equivalence", samples=False, validation=False),
    # generation with a LoRA
    "sdxl_gen_img_lora": Scenario(kind="generate", samples=False, validation=False),
    # the simulator's own rules (what CUDA accepts passes, what it refuses raises)
    "device_rules": Scenario(kind="device_rules", samples=False, validation=False),
    # negative control: a CPU tensor planted in the batch path must raise
    "planted_cpu_tensor": Scenario(kind="planted_cpu_tensor", samples=False, validation=False),
}
