"""Which Python module implements a `network_module` name from a training config.

Names resolve as kohya resolves them (importlib), except "lycoris.kohya", which goes to our
wrapper networks.lycoris_kohya: same algorithms and arguments, but files with the SAI UNet and
`text_model_` text-encoder names every UI loads.
"""
from __future__ import annotations

import importlib

from library.errors import UserError

ALIASES = {"lycoris.kohya": "networks.lycoris_kohya"}

# kohya modules not offered here, with the LyCORIS algorithm that trains the same kind of network
REFUSED = {
    "networks.oft": ('kohya\'s OFT is not offered here; train orthogonal fine-tuning with LyCORIS: network_module = '
                     '"lycoris.kohya" and network_args = ["algo=diag-oft"] (or "algo=boft"), whose files ComfyUI and '
                     'A1111/Forge load'),
}


def import_network_module(name: str):
    """The module object for `network_module = name`; UserError if it cannot be imported."""
    if name in REFUSED:
        raise UserError(f"network_module '{name}': {REFUSED[name]}")
    target = ALIASES.get(name, name)
    try:
        module = importlib.import_module(target)
    except ModuleNotFoundError as error:
        raise UserError(f"network_module '{name}' cannot be imported ({error}); "
                        "use networks.lora, networks.lora_fa, networks.dylora or lycoris.kohya") from None
    for function in ("create_network", "create_network_from_weights"):
        if not hasattr(module, function):
            raise UserError(f"network_module '{name}' has no {function}(); it is not a network module")
    return module
