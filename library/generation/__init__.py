"""Image generation with LoRAs for checking trained files (tools/sdxl_gen_img.py).

prompts.py     A1111 `<lora:name:weight[:lbw=...]>` prompt tags
loras.py       LoRA files applied to a loaded model at chosen weights (and block weights), reversibly
embeddings.py  pivotal-tuning / textual-inversion `_emb.safetensors` files as new tokens
sampling.py    the SDXL denoising loop (CFG, diffusers schedulers, long prompts) -> PIL image
grid.py        labelled x/y comparison grids
"""
