"""Which modules kohya's networks.lora trains ("LierLa": every Linear and 1x1 conv inside the UNet's
transformer blocks and CLIP's attention and MLP; with a conv rank also the 3x3 convs of the ResNet,
down- and upsample blocks, "C3Lier"), for the network itself and for the tools that must pick the
same modules (extracting a LoRA from two models).
"""
from __future__ import annotations

from torch import nn

from library.lora.naming import ModelNames

UNET_TARGET_MODULES = ("Transformer2DModel",)
UNET_TARGET_MODULES_CONV3X3 = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_TARGET_MODULES = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


def target_children(root: nn.Module, classes) -> list[tuple[str, nn.Module]]:
    """(path, module) of every Linear/Conv2d inside a module whose class name is in `classes`."""
    found, seen = [], set()
    for name, module in root.named_modules():
        if type(module).__name__ not in classes:
            continue
        for child_name, child in module.named_modules():
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                path = f"{name}.{child_name}" if name else child_name
                if path not in seen:
                    seen.add(path)
                    found.append((path, child))
    return found


def is_linear_or_1x1(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or module.kernel_size == (1, 1)


def lierla_names(unet, text_encoders, with_conv: bool) -> list[str]:
    """Canonical names of the modules networks.lora trains (text encoders first), with the 3x3 convs
    only when `with_conv` (a conv rank)."""
    names = ModelNames(unet, text_encoders)
    name_of = {(ref.component, ref.path): name for name, ref in names.refs.items()}
    found = []
    for index, encoder in enumerate(text_encoders, start=1):
        found += [name_of[(f"te{index}", path)] for path, _ in target_children(encoder, TEXT_ENCODER_TARGET_MODULES)]
    classes = UNET_TARGET_MODULES + (UNET_TARGET_MODULES_CONV3X3 if with_conv else ())
    found += [name_of[("unet", path)] for path, module in target_children(unet, classes) if with_conv or is_linear_or_1x1(module)]
    return found
