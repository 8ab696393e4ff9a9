"""torch_compile / dynamo_backend: the UNet compiled with torch.compile, the trainable network included.

The UNet is compiled in place (nn.Module.compile) after the network is attached, so the LoRA
modules patched into its layers are traced with it; the first step pays for compilation (and a
sample or a new bucket shape may recompile once), later steps run the compiled graphs. The
backend names are kohya's choices; one this torch does not have is an error naming those it has.
accelerate's own compilation (`accelerate launch --dynamo_backend`) is not used, as in kohya.
"""
from __future__ import annotations

from library.errors import UserError

# Regional compilation: the repeated blocks that hold nearly all of the UNet's compute. Blocks of one
# class share their compiled code (parameters are graph inputs), so compiling SDXL costs a few block
# compilations instead of one huge graph, and a recompile (a new bucket shape) stays small.
REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")


def compile_unet(unet, args, notices: list) -> str | None:
    """Compile `unet` when torch_compile is set; returns the backend used (None: not compiled)."""
    backend = (args.dynamo_backend or "inductor").lower()
    if not args.torch_compile:
        if backend not in ("inductor", "no"):
            notices.append(f"dynamo_backend = \"{args.dynamo_backend}\" is used only with torch_compile = true; not compiling")
        return None
    if backend == "no":
        raise UserError("torch_compile = true needs a dynamo_backend (\"inductor\" is the default); remove dynamo_backend = \"no\"")
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise UserError(f"dynamo_backend = \"{args.dynamo_backend}\" is not a torch.compile backend here; use one of "
                        f"{', '.join(b for b in known if 'TESTING' not in b and 'minifier' not in b)}")
    blocks = [m for m in unet.modules() if type(m).__name__ in REGIONS]
    for block in blocks:
        block.compile(backend=backend)
    notices.append(f"torch_compile: {len(blocks)} UNet blocks are compiled with the {backend} backend on the first step (a slow first step)")
    return backend
