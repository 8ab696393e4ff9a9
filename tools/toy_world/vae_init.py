"""The toy world's VAE, set weight by weight in the tiny SDXL VAE architecture.

Training a VAE from random weights to reproduce flat colours takes the tiny VAE thousands of steps
on a CPU, because every nonlinearity in it follows a GroupNorm, and a GroupNorm removes each
image's mean and scale: absolute colour survives only through circuits the network must discover.
Here those circuits are written in directly; the build then fits the latent scale to the world's
images (build.standardise_latents), which is all the "training" this codec needs:

- GroupNorm becomes exactly linear on a pair of channels (s, -s) holding a tiny signal: the pair's
  mean is 0 and its variance is far below the norm's eps, so it outputs s / sqrt(eps). Residual
  blocks become identities by zeroing their last convolution; attention by zeroing its output.
- Encoder: the latent is the average colour of each 8x8 block (R, G, B and their mean), through
  2x2 average-pooling downsamplers; silu(u) - silu(-u) = u recovers the signal exactly.
- Decoder: upsamples the block colours (nearest + blur), then one residual block computes, for every
  world colour, a detector max(0, tolerance - |colour - c_k|_1) from ramps silu(G (x - c_k)). The
  last GroupNorm (one channel per group, which removes the image mean) sees each detector map
  at a tiny scale; a clipped ramp turns it into a mask, and the output convolution paints
  background + sum_k mask_k (c_k - background).
"""
from __future__ import annotations

import torch

PAIR = 1e-5  # amplitude of (s, -s) signals: variance 1e-10, far below GroupNorm's eps of 1e-6
GN_EPS = 1e-6
GAIN = 1.0 / (GN_EPS**0.5)  # what a GroupNorm multiplies such a pair by
RAMP = 40.0  # sharpness of silu(G x) as max(0, x): error at most 0.28 / G
MARGIN = 0.2  # detectors fade to 0 over this distance from the halfway planes ([-1, 1] colour units)
MASK_GAIN = 8.0  # a detection of 1/8 above the image mean saturates the mask
MASK_THRESHOLD = 0.2
LOGVAR = -30.0  # posterior std e^-15: encoding is deterministic

BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def _zero(module) -> None:
    for parameter in module.parameters():
        parameter.data.zero_()


def _identity_resnet(resnet) -> None:
    """Zero the residual branch's output (and make a channel-changing shortcut an identity embedding)."""
    resnet.conv2.weight.data.zero_()
    resnet.conv2.bias.data.zero_()
    if resnet.conv_shortcut is not None:
        _embed(resnet.conv_shortcut, range(min(resnet.conv_shortcut.weight.shape[:2])))


def _embed(conv, channels) -> None:
    """conv copies `channels` through unchanged (centre tap) and outputs 0 elsewhere."""
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    centre = conv.weight.shape[-1] // 2
    for c in channels:
        conv.weight.data[c, c, centre, centre] = 1.0


def _identity_attention(attention) -> None:
    attention.to_out[0].weight.data.zero_()
    attention.to_out[0].bias.data.zero_()


def _blur(conv, channels) -> None:
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    for c in channels:
        conv.weight.data[c, c] = BLUR


def _average_downsampler(conv, channels) -> None:
    """Downsample2D pads right/bottom by one and uses a stride-2 3x3 conv: average the 2x2 block."""
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    for c in channels:
        conv.weight.data[c, c, :2, :2] = 0.25


def build_encoder(vae) -> None:
    encoder = vae.encoder
    signal = 8  # (R, -R, G, -G, B, -B, L, -L)
    conv = encoder.conv_in
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    for channel in range(3):
        conv.weight.data[2 * channel, channel, 1, 1] = PAIR
        conv.weight.data[2 * channel + 1, channel, 1, 1] = -PAIR
        conv.weight.data[6, channel, 1, 1] = PAIR / 3
        conv.weight.data[7, channel, 1, 1] = -PAIR / 3
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            _identity_resnet(resnet)
        for sampler in block.downsamplers or []:
            _average_downsampler(sampler.conv, range(signal))
    for resnet in encoder.mid_block.resnets:
        _identity_resnet(resnet)
    for attention in encoder.mid_block.attentions:
        _identity_attention(attention)
    encoder.conv_norm_out.weight.data.fill_(1.0)
    encoder.conv_norm_out.bias.data.zero_()
    out = encoder.conv_out
    out.weight.data.zero_()
    out.bias.data.zero_()
    scale = 1.0 / (PAIR * GAIN)
    for latent in range(4):  # silu(u) - silu(-u) = u
        out.weight.data[latent, 2 * latent, 1, 1] = scale
        out.weight.data[latent, 2 * latent + 1, 1, 1] = -scale
    out.bias.data[4:] = LOGVAR
    _embed(vae.quant_conv, range(8))


def _half_spaces(targets, back, k) -> list[tuple[torch.Tensor, float]]:
    """(normal, offset) per competitor of colour k (every other colour and the background):
    h(c) = normal . c + offset is the signed distance of c from the plane halfway between the two
    colours, positive on k's side."""
    own = torch.tensor(targets[k])
    planes = []
    for other in [t for j, t in enumerate(targets) if j != k] + [back]:
        other = torch.tensor(other)
        normal = (own - other) / (own - other).norm()
        planes.append((normal, float(-normal @ (own + other) / 2)))
    return planes


def detector(colour: torch.Tensor, targets, back, k: int) -> torch.Tensor:
    """The detector the decoder computes, in plain torch (for checks): 1 deep inside the set of
    colours nearer to targets[k] than to any other world colour, 0 outside, a ramp MARGIN wide."""
    penalty = sum(torch.relu(MARGIN - (colour @ normal + offset)) for normal, offset in _half_spaces(targets, back, k))
    return torch.relu(1 - penalty / MARGIN)


def build_decoder(vae, colours: list, background) -> None:
    """`colours`: the world's foreground colours (0-255 RGB); `background`: its background colour."""
    decoder = vae.decoder
    unit = lambda rgb: [c / 127.5 - 1 for c in rgb]  # noqa: E731
    targets, back = [unit(c) for c in colours], unit(background)
    count = len(targets)
    copies = count * count  # per colour one (s, -s) pair per competitor (the other colours and the background)
    assert 2 * copies + 2 * count <= decoder.conv_in.weight.shape[0], "too many colours for the decoder's width"
    _embed(vae.post_quant_conv, range(4))
    conv = decoder.conv_in
    conv.weight.data.zero_()
    conv.bias.data.zero_()
    for k in range(count):
        for j, (normal, offset) in enumerate(_half_spaces(targets, back, k)):
            pair = count * k + j
            for sign, row in ((1.0, 2 * pair), (-1.0, 2 * pair + 1)):
                conv.weight.data[row, :3, 1, 1] = sign * PAIR * normal
                conv.bias.data[row] = sign * PAIR * offset
    for resnet in decoder.mid_block.resnets:
        _identity_resnet(resnet)
    for attention in decoder.mid_block.attentions:
        _identity_attention(attention)
    detectors = [2 * copies + 2 * k for k in range(count)]  # residual channels of the detector maps
    blocks = decoder.up_blocks
    for index, block in enumerate(blocks):
        for resnet in block.resnets:
            _identity_resnet(resnet)
        for sampler in block.upsamplers or []:  # 8 -> 16: colours; 16 -> 32: detectors; 32 -> 64: their copies
            _blur(sampler.conv, [range(2 * copies), detectors, range(2 * count)][index])
    _detector_resnet(blocks[1].resnets[0], count, copies)
    # the 64 -> 32 channel shortcut keeps two copies (A, B) of every detector map
    shortcut = blocks[2].resnets[0].conv_shortcut
    shortcut.weight.data.zero_()
    shortcut.bias.data.zero_()
    for k, channel in enumerate(detectors):
        shortcut.weight.data[2 * k, channel, 0, 0] = 1.0
        shortcut.weight.data[2 * k + 1, channel, 0, 0] = 1.0
    _mask_output(decoder, targets, back)


def _detector_resnet(resnet, count, copies) -> None:
    """Residual block writing PAIR * detector_k into residual channel 2*copies + 2k. Its first norm
    sees the pairs (h, -h) of every colour's half-spaces; silu(RAMP x) / RAMP ~ max(0, x)."""
    norm1 = resnet.norm1
    norm1.weight.data.zero_()
    norm1.bias.data.zero_()
    for pair in range(copies):  # from -h: max(0, MARGIN - h)
        norm1.weight.data[2 * pair + 1] = RAMP / (PAIR * GAIN)
        norm1.bias.data[2 * pair + 1] = RAMP * MARGIN
    conv1 = resnet.conv1
    conv1.weight.data.zero_()
    conv1.bias.data.zero_()
    small = PAIR / 10  # detector pre-activations reach about -20: keep their variance far below eps too
    for k in range(count):
        for sign, row in ((1.0, 2 * k), (-1.0, 2 * k + 1)):
            conv1.bias.data[row] = sign * small
            for j in range(count):
                conv1.weight.data[row, 2 * (count * k + j) + 1, 1, 1] = -sign * small / (RAMP * MARGIN)
    norm2 = resnet.norm2
    norm2.weight.data.zero_()
    norm2.bias.data.zero_()
    for k in range(count):
        norm2.weight.data[2 * k] = RAMP / (small * GAIN)  # silu(RAMP t) ~ RAMP max(0, t)
    conv2 = resnet.conv2
    conv2.weight.data.zero_()
    conv2.bias.data.zero_()
    for k in range(count):
        conv2.weight.data[2 * copies + 2 * k, 2 * k, 1, 1] = PAIR / RAMP


def _mask_output(decoder, targets, back) -> None:
    """Last GroupNorm (one channel per group, removes the image mean): z = MASK_GAIN (d - mean d) -
    MASK_THRESHOLD; copy A gives silu(G z), copy B silu(G (z - 1)); (A - B) / G is z clipped
    to [0, 1]; the output is background + sum of mask x (colour - background)."""
    norm = decoder.conv_norm_out
    norm.weight.data.zero_()
    norm.bias.data.zero_()
    weight = RAMP * MASK_GAIN / (PAIR * GAIN)
    for k in range(len(targets)):
        norm.weight.data[2 * k] = weight
        norm.bias.data[2 * k] = -RAMP * MASK_THRESHOLD
        norm.weight.data[2 * k + 1] = weight
        norm.bias.data[2 * k + 1] = -RAMP * (MASK_THRESHOLD + 1)
    out = decoder.conv_out
    out.weight.data.zero_()
    out.bias.data.copy_(torch.tensor(back))
    for k, target in enumerate(targets):
        for channel in range(3):
            delta = (target[channel] - back[channel]) / RAMP
            out.weight.data[channel, 2 * k, 1, 1] = delta
            out.weight.data[channel, 2 * k + 1, 1, 1] = -delta


@torch.no_grad()
def build_vae(vae, colours: list, background) -> None:
    """Set every weight of a tiny-SDXL-architecture AutoencoderKL (in place)."""
    build_encoder(vae)
    build_decoder(vae, colours, background)
