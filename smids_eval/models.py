"""VGG19 (torchvision layout, no batch norm) adapted to one study variant.

The network is split in two so the frozen part can be run once and cached:

* ``prefix``: input normalisation + the frozen convolutional blocks (1 .. 5 - unfreeze_blocks);
* ``suffix``: the trainable blocks (the last ``unfreeze_blocks``) + the 3-class head
  (global average pool → Linear(512·width, head_hidden) → ReLU → [Dropout] → Linear(head_hidden, 3)).

Input: float images in [0, 1], shape (N, 1, S, S) for grey variants, (N, 3, S, S) for RGB.
Grey variants use conv1 weights summed over the RGB axis: a grey pixel g fed as (g, g, g) to the
RGB filter gives the same response as g fed to the summed filter, so pretrained filters still
apply. Normalisation is ImageNet mean/std for RGB, the luminance-weighted (0.299, 0.587, 0.114)
mean/std for grey.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from . import CLASSES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
GREY_MEAN = sum(w * m for w, m in zip(LUMA, IMAGENET_MEAN, strict=True))
GREY_STD = sum(w * s for w, s in zip(LUMA, IMAGENET_STD, strict=True))

#: torchvision ``cfgs["E"]`` (VGG19) split into its five blocks (each ends with a max-pool).
VGG19_BLOCKS = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class Normalize(nn.Module):
    """(x - mean) / std with fixed per-channel buffers (no parameters)."""

    def __init__(self, in_channels: int):
        super().__init__()
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if in_channels == 3 else ((GREY_MEAN,), (GREY_STD,))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Head(nn.Module):
    """Global average pool → BatchNorm (no affine) → Linear → ReLU → Dropout (dropout variants)
    → Linear(…, 3).

    The parameter-free BatchNorm standardises each pooled feature, as in MAE's linear probing:
    without it, features of a randomly initialised (not pretrained) VGG19 vary so little between
    images that the head barely learns at the study's learning rates; with ImageNet features it
    is a harmless rescaling.
    """

    def __init__(self, in_features: int, hidden: int, dropout_p: float | None, n_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.BatchNorm1d(in_features, affine=False)
        self.fc1 = nn.Linear(in_features, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout_p) if dropout_p else None
        self.fc2 = nn.Linear(hidden, n_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The head_hidden activations after ReLU (before dropout)."""
        return self.relu(self.fc1(self.norm(torch.flatten(self.pool(x), 1).float())))

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            h = self.dropout(h)
        return self.fc2(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.penultimate(x))


class Suffix(nn.Module):
    """Trainable conv blocks (possibly none) followed by the head."""

    def __init__(self, blocks: nn.Sequential, head: Head):
        super().__init__()
        self.blocks = blocks
        self.head = head

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.penultimate(self.blocks(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


class VGG19Variant(nn.Module):
    """``prefix`` (normalisation + frozen conv blocks) → ``suffix`` (trainable blocks + head)."""

    def __init__(self, prefix: nn.Sequential, suffix: Suffix, in_channels: int, size: int,
                 width: float):
        super().__init__()
        self.prefix = prefix
        self.suffix = suffix
        self.in_channels = in_channels
        self.size = size
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix.penultimate(self.prefix(x))

    def prefix_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the prefix output for one input image."""
        frozen = self.prefix_depth
        channels = (self.in_channels if frozen == 0
                    else scaled(VGG19_BLOCKS[frozen - 1][0], self.width))
        side = self.size // (2 ** frozen)
        return channels, side, side

    @property
    def prefix_depth(self) -> int:
        """Number of frozen conv blocks (0..5)."""
        return sum(1 for m in self.prefix if isinstance(m, nn.MaxPool2d))

    def conv_layers(self) -> list[nn.Conv2d]:
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)]


def conv_flops(module: nn.Module, in_channels: int, size: int) -> int:
    """FLOPs of ``module``'s convolutions on one ``size``×``size`` image, counted on a forward
    pass: 2 × multiply-adds, the unit of the bf16 matmul peak (2·n³ per n×n product).

    Published "GFLOPs" of VGG19 (19.6 at 224 px, torchvision's table) count multiply-adds once;
    a fraction of the matmul peak taken with them reads half the true one.
    """
    total = 0

    def count(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += 2 * output.numel() * (conv.in_channels // conv.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        param = next(module.parameters(), None)
        x = torch.zeros(1, in_channels, size, size,
                        device=param.device if param is not None else "cpu")
        with torch.inference_mode():
            module(x)
    finally:
        for hook in hooks:
            hook.remove()
    return total


class SmallMapConv2d(nn.Conv2d):
    """A 3×3 'same' convolution that, on CPU feature maps of at most ``SMALL_MAP`` pixels
    (block 5 at 64 px is 4×4), runs as one matrix product over the nine shifted copies of its
    channels-last input (im2col). oneDNN's convolution is slow on maps that small: a training
    step of F.1's block 5 and head at 4×4 under bf16 runs 2.2× faster this way on one core
    (``benchmark/test_throughput.py::test_f1_block5_step``). Same parameters and state as
    ``nn.Conv2d``; the result differs by rounding only. Larger maps (no faster at 8×8, slower
    at 14×14), and other devices, use the convolution."""

    SMALL_MAP = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if x.device.type != "cpu" or h * w > self.SMALL_MAP:
            return super().forward(x)
        dtype = (torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                 else x.dtype)
        padded = F.pad(x.to(dtype).permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        columns = torch.cat([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                            dim=-1).reshape(n * h * w, -1)
        weight = self.weight.permute(0, 2, 3, 1).reshape(self.out_channels, -1).to(dtype)
        y = torch.addmm(self.bias.to(dtype), columns, weight.t())
        # a copy, not a view: the in-place ReLU that follows would otherwise rebase the view
        # and drop hooks on this output (Grad-CAM's gradient hook); it is 1 MB a batch
        return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2).clone(
            memory_format=torch.channels_last)


def vgg19_features(width: float = 1.0, in_channels: int = 3, trainable_from: int = 5
                   ) -> list[nn.Module]:
    """torchvision's ``make_layers(cfgs['E'])`` with scaled channels (same layer indices).
    Blocks from index ``trainable_from`` on (the trainable ones) use ``SmallMapConv2d``; the
    frozen prefix keeps ``nn.Conv2d``, so cached activations do not depend on it."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for b, block in enumerate(VGG19_BLOCKS):
        conv = SmallMapConv2d if b >= trainable_from else nn.Conv2d
        for c in block:
            c_out = scaled(c, width)
            layers += [conv(c_in, c_out, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c_in = c_out
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return layers


def init_random_(layers: list[nn.Module], generator: torch.Generator) -> None:
    """torchvision's VGG init (Kaiming-normal fan_out convs, zero bias), from ``generator``."""
    for m in layers:
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * std)
                m.bias.zero_()


def load_features_(layers: list[nn.Module], state: dict[str, torch.Tensor], in_channels: int) -> None:
    """Copy torchvision ``features.<i>.weight/bias`` tensors into ``layers`` (summing conv1 over
    RGB for grey input). Shapes are validated beforehand by ``smids_eval.weights``."""
    for i, m in enumerate(layers):
        if isinstance(m, nn.Conv2d):
            w = state[f"features.{i}.weight"].float()
            if i == 0 and in_channels == 1:
                w = w.sum(dim=1, keepdim=True)
            with torch.no_grad():
                m.weight.copy_(w)
                m.bias.copy_(state[f"features.{i}.bias"].float())


def build_vgg19(in_channels: int = 3, unfreeze_blocks: int = 0, dropout_p: float | None = None,
                head_hidden: int = 256, width: float = 1.0, size: int = 224,
                features_state: dict[str, torch.Tensor] | None = None, init_seed: int = 0,
                n_classes: int = len(CLASSES), small_map_conv: bool = True) -> VGG19Variant:
    """Build the split model. ``features_state`` = torchvision-layout conv weights (RGB), or None
    for random (seeded) init. Prefix parameters are frozen (``requires_grad=False``); the
    trainable blocks use ``SmallMapConv2d`` unless ``small_map_conv`` is false."""
    if not 0 <= unfreeze_blocks <= 5:
        raise ValueError(f"unfreeze_blocks must be 0..5, got {unfreeze_blocks}")
    if size % 32:
        raise ValueError(f"image size must be a multiple of 32 (5 max-pools), got {size}")
    generator = torch.Generator().manual_seed(init_seed)
    layers = vgg19_features(width, in_channels,
                            trainable_from=5 - unfreeze_blocks if small_map_conv else 5)
    if features_state is None:
        init_random_(layers, generator)
    else:
        load_features_(layers, features_state, in_channels)
    # split after block (5 - unfreeze_blocks): count max-pools
    frozen_blocks = 5 - unfreeze_blocks
    cut, pools = 0, 0
    while pools < frozen_blocks:
        pools += isinstance(layers[cut], nn.MaxPool2d)
        cut += 1
    prefix = nn.Sequential(Normalize(in_channels), *layers[:cut])
    for p in prefix.parameters():
        p.requires_grad_(False)
    head = Head(scaled(512, width), head_hidden, dropout_p, n_classes)
    init_head_(head, generator)
    return VGG19Variant(prefix, Suffix(nn.Sequential(*layers[cut:]), head), in_channels, size, width)


def init_head_(head: Head, generator: torch.Generator) -> None:
    """PyTorch's default Linear init (Kaiming-uniform a=√5), drawn from ``generator``."""
    for fc in (head.fc1, head.fc2):
        bound = 1.0 / fc.in_features ** 0.5
        with torch.no_grad():
            fc.weight.copy_((torch.rand(fc.weight.shape, generator=generator) * 2 - 1) * bound)
            fc.bias.copy_((torch.rand(fc.bias.shape, generator=generator) * 2 - 1) * bound)


def with_state(model: VGG19Variant, suffix_state: dict[str, torch.Tensor]) -> VGG19Variant:
    """A deep copy of ``model`` whose suffix holds ``suffix_state``."""
    model = copy.deepcopy(model)
    model.suffix.load_state_dict(suffix_state)
    return model
