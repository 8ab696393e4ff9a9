"""Network modules in kohya's plug-in contract (`network_module = "networks.lora"`) and LoRA file tools."""
