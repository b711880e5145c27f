"""Model construction, the prefix/suffix split and weight loading (tiny VGG19, width 1/16)."""

import logging

import pytest
import torch
from tiny_vgg import SIZE, WIDTH
from torch import nn

from smids_eval.errors import ConfigError
from smids_eval.models import (
    GREY_MEAN,
    VGG19_BLOCKS,
    SmallMapConv2d,
    build_vgg19,
    conv_flops,
    scaled,
    vgg19_features,
)
from smids_eval.weights import expected_shapes, load_weights_file, resolve_weights


class _TorchvisionLayout(nn.Module):
    """Same key layout as torchvision's vgg19 (``features.<i>.*``, ``classifier.*``)."""

    def __init__(self, width, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(*vgg19_features(width, 3))
        self.classifier = nn.Linear(4, 2)


def _save_checkpoint(path, width=WIDTH, wrap=False, seed=0):
    state = _TorchvisionLayout(width, seed).state_dict()
    torch.save({"state_dict": state, "epoch": 3} if wrap else state, path)
    return state


def test_forward_shapes_and_split():
    x = torch.rand(2, 3, SIZE, SIZE)
    for k, depth, n_suffix_convs in [(0, 5, 0), (1, 4, 4), (5, 0, 16)]:
        model = build_vgg19(3, unfreeze_blocks=k, width=WIDTH, size=SIZE, head_hidden=8)
        assert model.prefix_depth == depth
        assert sum(isinstance(m, nn.Conv2d) for m in model.suffix.blocks) == n_suffix_convs
        assert tuple(model.prefix(x).shape[1:]) == model.prefix_shape()
        assert model(x).shape == (2, 3)
        assert model.penultimate(x).shape == (2, 8)
        assert not any(p.requires_grad for p in model.prefix.parameters())
        assert all(p.requires_grad for p in model.suffix.parameters())


def test_dropout_only_for_dropout_variants():
    assert build_vgg19(3, dropout_p=None, width=WIDTH, size=SIZE).suffix.head.dropout is None
    assert build_vgg19(3, dropout_p=0.5, width=WIDTH, size=SIZE).suffix.head.dropout.p == 0.5


def test_grey_conv1_is_rgb_sum_and_runs(tmp_path):
    state = _save_checkpoint(tmp_path / "w.pth")
    loaded = load_weights_file(tmp_path / "w.pth", width=WIDTH)
    grey = build_vgg19(1, width=WIDTH, size=SIZE, features_state=loaded.state)
    rgb = build_vgg19(3, width=WIDTH, size=SIZE, features_state=loaded.state)
    conv_g, conv_rgb = grey.conv_layers()[0], rgb.conv_layers()[0]
    assert conv_g.in_channels == 1
    torch.testing.assert_close(conv_g.weight, state["features.0.weight"].sum(1, keepdim=True))
    # a grey pixel g as (g, g, g) through the RGB filter == g through the summed filter
    g = torch.rand(2, 1, SIZE, SIZE)
    torch.testing.assert_close(conv_g(g), conv_rgb(g.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    # luminance-weighted normalisation constant
    assert abs(grey.prefix[0].mean.item() - GREY_MEAN) < 1e-7
    assert grey(g).shape == (2, 3)


def test_weights_file_round_trip(tmp_path):
    state = _save_checkpoint(tmp_path / "plain.pth")
    _save_checkpoint(tmp_path / "wrapped.pth", wrap=True)
    for name in ("plain.pth", "wrapped.pth"):
        w = load_weights_file(tmp_path / name, width=WIDTH)
        assert w.pretrained and w.weights_id.startswith(f"file:{name}:") and len(w.weights_id.split(":")[2]) == 12
        model = build_vgg19(3, unfreeze_blocks=1, width=WIDTH, size=SIZE, features_state=w.state)
        convs = model.conv_layers()
        torch.testing.assert_close(convs[0].weight, state["features.0.weight"])
        torch.testing.assert_close(convs[-1].weight, state["features.34.weight"])  # in the suffix
    other = load_weights_file(_save_path(tmp_path, seed=1), width=WIDTH)
    assert other.weights_id != w.weights_id  # the id hashes the content


def _save_path(tmp_path, seed):
    path = tmp_path / f"seed{seed}.pth"
    _save_checkpoint(path, seed=seed)
    return path


def test_weights_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="nope.pth does not exist"):
        load_weights_file(tmp_path / "nope.pth", width=WIDTH)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="corrupt.pth is not a readable torch checkpoint"):
        load_weights_file(corrupt, width=WIDTH)
    _save_checkpoint(tmp_path / "wide.pth", width=WIDTH * 2)
    with pytest.raises(ConfigError, match=r"wide.pth does not fit .*features.0.weight: file \(8, 3, 3, 3\) vs model \(4, 3, 3, 3\)"):
        load_weights_file(tmp_path / "wide.pth", width=WIDTH)
    partial = {k: v for k, v in _TorchvisionLayout(WIDTH).state_dict().items() if k != "features.34.bias"}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match=r"partial.pth lacks vgg19 keys \['features.34.bias'\]"):
        load_weights_file(tmp_path / "partial.pth", width=WIDTH)
    with pytest.raises(ConfigError, match="width"):
        resolve_weights("imagenet", width=WIDTH)


def test_auto_without_cached_imagenet_is_random(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING):
        w = resolve_weights("auto", width=1.0)
    assert w.weights_id == "random" and not w.pretrained
    assert "NOT pretrained" in caplog.text
    assert expected_shapes(1.0)["features.34.weight"] == (512, 512, 3, 3)


@pytest.mark.parametrize("side", [1, 2, 4, 8])
def test_small_map_convolution_equals_the_convolution(side):
    """The trainable blocks' matrix-product convolution gives the convolution's outputs and
    gradients (fp32; maps over SMALL_MAP pixels take the convolution itself)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 3, padding=1)
    fast = SmallMapConv2d(6, 5, 3, padding=1)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(3, 6, side, side).contiguous(memory_format=torch.channels_last)
    ref, out = conv(x), fast(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (ref ** 2).sum().backward()
    (out ** 2).sum().backward()
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.bias.grad, conv.bias.grad, atol=1e-4, rtol=1e-4)


def test_only_the_trainable_blocks_use_the_small_map_convolution():
    model = build_vgg19(3, unfreeze_blocks=1, width=0.0625, size=64)
    assert not any(isinstance(m, SmallMapConv2d) for m in model.prefix)
    convs = [m for m in model.suffix.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(isinstance(m, SmallMapConv2d) for m in convs)
    x = torch.rand(2, 3, 64, 64)
    reference = build_vgg19(3, unfreeze_blocks=1, width=0.0625, size=64, small_map_conv=False)
    assert not any(isinstance(m, SmallMapConv2d) for m in reference.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-4)


def test_conv_flops_counts_two_per_multiply_add_at_every_size_and_width():
    """VGG19 features at 224 px: 19.5 G multiply-adds (torchvision's "19.63 GFLOPS" counts them
    once), so 39.0 GFLOP in the unit of the matmul peak; the count follows size² and width²."""
    full = build_vgg19(3, unfreeze_blocks=0, size=224).prefix
    assert conv_flops(full, 3, 224) == pytest.approx(39.0e9, rel=0.01)
    assert conv_flops(full, 3, 112) == conv_flops(full, 3, 224) // 4
    narrow = build_vgg19(1, unfreeze_blocks=0, size=64, width=0.25).prefix
    macs = 0
    c_in, side = 1, 64
    for block in VGG19_BLOCKS:
        for c in block:
            macs += side * side * c_in * scaled(c, 0.25) * 9
            c_in = scaled(c, 0.25)
        side //= 2
    assert conv_flops(narrow, 1, 64) == 2 * macs
