"""SDXL model loading, saving, key-name conversion and tokenizers."""
