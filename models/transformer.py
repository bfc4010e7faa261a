"""Feed-forward transform networks of the Johnson / ReCoNet family.

One configurable class covers the sizes we ship: an encoder (9x9 conv, two
stride-2 convs), residual blocks at 1/4 resolution, and a decoder of
nearest-upsample + 3x3 conv (not transposed conv, which leaves checkerboard
artefacts), ending in a 9x9 conv. Reflection padding everywhere so borders
do not darken.

``in_channels`` is 3 for per-frame stylization and 7 for the flow-recurrent
variant (frame, warped previous output, occlusion mask; Ruder et al.).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from pipeline.device import intra_op_threads

# Input/output convention of every net: RGB in [0, 1], shape (N, C, H, W).


@dataclass(frozen=True)
class TransformerConfig:
    base_channels: int = 32  # 32 -> 32/64/128 as in Johnson et al.
    residual_blocks: int = 5
    in_channels: int = 3
    # No normalization layers by default ("instance" and "batch" are available). Instance
    # norm throws away each image's absolute brightness and contrast; with the HED loss
    # network the net then planted saturated bubbles, rings and streaks to steer a
    # channel's per-image statistics (StyleGAN2 traced its "droplets" to the same cause),
    # at any content weight, learning rate, or identity warm start we tried; batch norm
    # washed colours out. Without normalization the same 150-step A/B came out clean.
    # "instance-inner": instance norm at 1/2 and 1/4 resolution only; the two full-size layers
    # (the first 9x9 conv's output and the last upsample's) have none. For the flow-free student,
    # whose norms at full size are most of their cost (16-channel 640x360 maps): an A/B of
    # issue 13, see the README's table of students.
    norm: str = "none"
    # Optionally the input also goes, beside the decoder's features, into the last 9x9 conv,
    # so colours and contrast need not survive the whole net (identity learned to 0.0025
    # pixel MSE in 150 steps, against 0.045 without). Off by default: with it the nets
    # learned to pass the photo through with a colour cast and fine texture (starry_night,
    # 470 steps at 128 px: style loss 1.79 with the path, 0.69 without).
    input_skip: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        known = {k: d[k] for k in ("base_channels", "residual_blocks", "in_channels", "norm", "input_skip")
                 if k in d}
        known.setdefault("input_skip", False)  # cards written before the path existed
        known.setdefault("norm", "instance")  # (and before the default changed)
        return cls(**known)


# Named sizes: "full" is Johnson's net (~1.68M parameters); "student" has
# about a fifth of its FLOPs (see flops_per_pixel) for the flow-free student.
SIZES = {
    "full": TransformerConfig(base_channels=32, residual_blocks=5),
    "student": TransformerConfig(base_channels=16, residual_blocks=3),
}


class FilterResponseNorm(nn.Module):
    """FRN (Singh & Krishnan 2020): divide each map by its RMS over H, W; then scale and shift.

    Unlike instance norm it keeps each map's mean, so a map need not smuggle the image's
    brightness through a local spike (the "bubbles" instance norm planted here). The
    ReCoNet reimplementation (EmptySamurai/pytorch-reconet) removed its bubbles this way.
    With ``tlu`` the activation is the thresholded linear unit max(y, tau) that replaces ReLU.
    """

    def __init__(self, channels: int, tlu: bool = True, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.tau = nn.Parameter(torch.zeros(1, channels, 1, 1)) if tlu else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nu2 = x.float().pow(2).mean(dim=(2, 3), keepdim=True)
        y = (x.float() * torch.rsqrt(nu2 + self.eps)).to(x.dtype) * self.gamma + self.beta
        return torch.maximum(y, self.tau) if self.tau is not None else y


class InstanceNorm(nn.InstanceNorm2d):
    """Instance norm (Ulyanov et al.) computed as group norm with one channel per group.

    The same function and the same parameters (``weight``, ``bias``: checkpoints load either way),
    but PyTorch's instance norm reshapes to a batch norm and copies channels-last maps back and
    forth: at 640x360 on a 2-core CPU it took 40 ms per 32-channel layer, group norm 1.9 ms, and the
    full net ran 1.4 fps against 2.2 fps without norms (AMD EPYC, fp32, 2026-12-06).

    Group norm on a CPU splits its sums by thread, so its last bits depend on the thread count; a
    render's chunks run on workers with different counts and must agree to the bit, so outside
    training it sums on one thread (2.4 ms against 2.1 ms for that layer in bf16, 3% of the net).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fixed_order = not torch.is_grad_enabled() and x.device.type == "cpu"
        with intra_op_threads(1 if fixed_order else None):
            return nn.functional.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def _norm_act(channels: int, kind: str, activation: bool = True) -> list[nn.Module]:
    """Normalization (+ ReLU) as a list of modules."""
    if kind == "frn":  # FRN brings its own activation (TLU)
        return [FilterResponseNorm(channels, tlu=activation)]
    act = [nn.ReLU(inplace=True)] if activation else []
    if kind == "batch":
        return [nn.BatchNorm2d(channels)] + act
    if kind == "instance":
        return [InstanceNorm(channels, affine=True)] + act
    if kind == "none":
        return act
    raise ValueError(f"unknown normalization {kind!r}")


class ConvLayer(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride))


class ConvNormReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: str):
        super().__init__(ConvLayer(cin, cout, kernel, stride), *_norm_act(cout, norm))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            ConvLayer(channels, channels, 3), *_norm_act(channels, norm),
            ConvLayer(channels, channels, 3), *_norm_act(channels, norm, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvLayer(cin, cout, 3), *_norm_act(cout, norm),
        )


class TransformerNet(nn.Module):
    """Image transform net; ``encode`` exposes the features the feature-level temporal loss needs."""

    # The two stride-2 convs and two x2 upsamples need sides divisible by 4.
    MULTIPLE = 4

    def __init__(self, config: TransformerConfig = SIZES["full"]):
        super().__init__()
        self.config = config
        c = config.base_channels
        # n: the norm of the layers at 1/2 and 1/4 resolution; full: of the two at full size
        n, full = ("instance", "none") if config.norm == "instance-inner" else (config.norm, config.norm)
        self.encoder = nn.Sequential(
            ConvNormReLU(config.in_channels, c, 9, 1, full),
            ConvNormReLU(c, 2 * c, 3, 2, n),
            ConvNormReLU(2 * c, 4 * c, 3, 2, n),
            *[ResidualBlock(4 * c, n) for _ in range(config.residual_blocks)],
        )
        self.decoder = nn.Sequential(
            UpsampleConv(4 * c, 2 * c, n),
            UpsampleConv(2 * c, c, full),
        )
        self.head = ConvLayer(c + (config.in_channels if config.input_skip else 0), 3, 9)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Raw output from the encoder's ``features`` of input ``x``.

        Linear output, no sigmoid/tanh: a saturated squashing function has no
        gradient, and regions that saturate early in training stay black for good.
        """
        f = self.decoder(features)
        return self.head(torch.cat([f, x], dim=1) if self.config.input_skip else f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw output (training); ``stylize`` gives displayable [0, 1] images."""
        return self.decode(self.encode(x), x)

    def stylize(self, x: torch.Tensor) -> torch.Tensor:
        """Inference for any size: reflect-pads to a multiple of 4, crops back, clamps to [0, 1]."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.MULTIPLE, (-w) % self.MULTIPLE
        if ph or pw:
            x = nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
        y = self(x)
        return y[..., :h, :w].clamp(0, 1)


class _InwardClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return y.clamp(0, 1)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        # A descent step moves y by -grad: let the gradient through inside [0, 1] and where it
        # points back into the range; block it where it would push an out-of-range pixel further out.
        outward = ((y > 1) & (grad < 0)) | ((y < 0) & (grad > 0))
        return grad.masked_fill(outward, 0)


def straight_through_clamp(y: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in the forward pass; in the backward pass, identity except outward.

    Losses judge the image that will be shown, and out-of-range pixels still
    receive the gradients that pull them back. A plain straight-through clamp
    also passes the gradients that push them further out (a loss asking for
    "brighter than white" is never satisfied), and the raw outputs ran away:
    two full-size runs blew up (raw outputs ~1e5) after 450 and 1900 steps.
    """
    return _InwardClamp.apply(y)


def parameter_count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def flops_per_pixel(config: TransformerConfig) -> float:
    """Multiply-adds per output pixel (convolutions only), used to size the student."""
    c, cin = config.base_channels, config.in_channels
    macs = 81 * cin * c  # 9x9 in
    macs += 9 * c * 2 * c / 4  # stride-2 conv, output at 1/2
    macs += 9 * 2 * c * 4 * c / 16  # stride-2 conv, output at 1/4
    macs += config.residual_blocks * 2 * 9 * (4 * c) ** 2 / 16
    macs += 9 * 4 * c * 2 * c / 4  # up to 1/2
    macs += 9 * 2 * c * c  # up to full
    macs += 81 * (c + (cin if config.input_skip else 0)) * 3  # 9x9 out
    return 2 * macs
