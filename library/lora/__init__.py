"""LoRA files and the math behind them: key names, metadata, loading/saving, applying weights.

naming.py        module paths <-> `lora_unet_<SAI path>` / `lora_te{1,2}_text_model_...` names
weights_math.py  one key group (LoRA, LoCon, LoHa, LoKr, DoRA, full diff) -> new base weight
file_io.py       save (atomic, precision, hashes, consumer warnings) and load (normalised)
metadata.py      ss_* training metadata, sshs hashes, ModelSpec keys
network_args.py  parsing and validation of kohya-style `network_args` strings, SDXL block indices
modules.py       the trainable LoRAModule that wraps one Linear/Conv2d
network_modules.py  `network_module` name -> Python module (lycoris.kohya -> our wrapper)
merge.py         merge LoRA files into a loaded model (base_weights, merge_to)
"""
