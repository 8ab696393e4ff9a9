"""LoRA files and the math behind them: key names, metadata, loading/saving, applying weights.

naming.py        module paths <-> `lora_unet_<SAI path>` / `lora_te{1,2}_text_model_...` names
weights_math.py  one key group (LoRA, LoCon, LoHa, LoKr, DoRA, full diff) -> new base weight
file_io.py       save (atomic, precision, hashes, consumer warnings) and load (normalised)
metadata.py      ss_* training metadata, sshs hashes, ModelSpec keys
network_args.py  parsing and validation of kohya-style `network_args` strings, SDXL block indices
modules.py       the trainable LoRAModule that wraps one Linear/Conv2d
network_modules.py  `network_module` name -> Python module (lycoris.kohya -> our wrapper)
merge.py         merge LoRA files into a loaded model (base_weights, merge_to)
lora_files.py    read LoRA files without a model, refuse non-LoRA files, metadata of derived files
combine.py       merge into a checkpoint, exact concat of ranks, kohya's sum
svd.py           SVD, rank choice and retained energy
rerank.py        resize and SVD merge
extract.py       a LoRA from the difference of two models
block_weights.py block layouts (SDXL 12/20, SD1.x 17/26), presets, baking block weights
"""
