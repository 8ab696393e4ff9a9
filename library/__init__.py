"""Reusable core of the SDXL LoRA toolkit: models, data, training and LoRA-file logic."""
import os

# The toolkit never downloads: make every Hugging Face library fail fast instead of reaching out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")

# Other libraries' known-harmless messages stay out of the terminal; bitsandbytes loads only when used.
from library import third_party as _third_party  # noqa: E402

_third_party.install()
