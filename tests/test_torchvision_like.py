"""torchvision-layout architectures: the full state-dict key lists and shapes of torchvision's
published layouts (written here from the documentation, independently of the module), the
published parameter counts, a safe save/load round trip and DenseNet's legacy key names."""
import re

import pytest
import torch

from geomexpl import nets

# torchvision's documented parameter counts (the "num_params" of each model's weights table)
PUBLISHED_PARAMS = {"vgg16": 138_357_544, "resnet18": 11_689_512, "resnet50": 25_557_032,
                    "densenet121": 7_978_856, "alexnet": 61_100_840}


def conv(name, c_out, c_in, k, bias=True):
    return {f"{name}.weight": (c_out, c_in, k, k), **({f"{name}.bias": (c_out,)} if bias else {})}


def bn(name, c):
    return {f"{name}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{name}.num_batches_tracked": ()}


def linear(name, c_out, c_in):
    return {f"{name}.weight": (c_out, c_in), f"{name}.bias": (c_out,)}


def vgg16_layout(k=1000):
    keys, c, i = {}, 3, 0
    for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if item != "M":
            keys |= conv(f"features.{i}", item, c, 3)
            c, i = item, i + 2
        else:
            i += 1
    return keys | linear("classifier.0", 4096, 512 * 49) | linear("classifier.3", 4096, 4096) | linear(
        "classifier.6", k, 4096)


def resnet_layout(blocks, bottleneck, k=1000):
    keys = conv("conv1", 64, 3, 7, False) | bn("bn1", 64)
    inplanes, expansion = 64, 4 if bottleneck else 1
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        for b in range(n):
            p = f"layer{stage + 1}.{b}"
            if bottleneck:
                keys |= conv(f"{p}.conv1", planes, inplanes, 1, False) | bn(f"{p}.bn1", planes)
                keys |= conv(f"{p}.conv2", planes, planes, 3, False) | bn(f"{p}.bn2", planes)
                keys |= conv(f"{p}.conv3", planes * 4, planes, 1, False) | bn(f"{p}.bn3", planes * 4)
            else:
                keys |= conv(f"{p}.conv1", planes, inplanes, 3, False) | bn(f"{p}.bn1", planes)
                keys |= conv(f"{p}.conv2", planes, planes, 3, False) | bn(f"{p}.bn2", planes)
            if b == 0 and (stage > 0 or inplanes != planes * expansion):
                keys |= conv(f"{p}.downsample.0", planes * expansion, inplanes, 1, False)
                keys |= bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return keys | linear("fc", k, 512 * expansion)


def densenet121_layout(k=1000):
    keys = conv("features.conv0", 64, 3, 7, False) | bn("features.norm0", 64)
    c = 64
    for i, n in enumerate((6, 12, 24, 16)):
        for j in range(n):
            p = f"features.denseblock{i + 1}.denselayer{j + 1}"
            keys |= bn(f"{p}.norm1", c + 32 * j) | conv(f"{p}.conv1", 128, c + 32 * j, 1, False)
            keys |= bn(f"{p}.norm2", 128) | conv(f"{p}.conv2", 32, 128, 3, False)
        c += 32 * n
        if i < 3:
            keys |= bn(f"features.transition{i + 1}.norm", c) | conv(f"features.transition{i + 1}.conv", c // 2, c, 1,
                                                                       False)
            c //= 2
    return keys | bn("features.norm5", c) | linear("classifier", k, c)


def alexnet_layout(k=1000):
    return (conv("features.0", 64, 3, 11) | conv("features.3", 192, 64, 5) | conv("features.6", 384, 192, 3)
            | conv("features.8", 256, 384, 3) | conv("features.10", 256, 256, 3) | linear("classifier.1", 4096, 9216)
            | linear("classifier.4", 4096, 4096) | linear("classifier.6", k, 4096))


LAYOUTS = {"vgg16": vgg16_layout, "resnet18": lambda k=1000: resnet_layout((2, 2, 2, 2), False, k),
           "resnet50": lambda k=1000: resnet_layout((3, 4, 6, 3), True, k), "densenet121": densenet121_layout,
           "alexnet": alexnet_layout}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_state_dict_keys_and_shapes_match_torchvision(name):
    model = nets.torchvision_like(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = LAYOUTS[name]()
    assert list(got) == list(want)  # same keys in the same (registration) order
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]
    assert not model.training
    small = nets.torchvision_like(name, num_classes=7)
    assert {k: tuple(v.shape) for k, v in small.state_dict().items()} == LAYOUTS[name](7)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown torchvision architecture 'resnet101'"):
        nets.torchvision_like("resnet101")


def test_vgg16_state_dict_round_trip_through_the_safe_loader(tmp_path):
    torch.manual_seed(0)
    model = nets.torchvision_like("vgg16", num_classes=10)
    path = tmp_path / "vgg16.pth"
    torch.save(model.state_dict(), path)  # a bare state_dict, as torchvision users save it
    loaded = nets.torchvision_like("vgg16", num_classes=10)
    assert nets.load_weights(loaded, path) == {}
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    wrong = nets.torchvision_like("vgg16")  # 1000 classes: strict loading refuses
    with pytest.raises(nets.WeightFileError, match="does not fit VGG"):
        nets.load_weights(wrong, path)


def test_densenet_legacy_keys_are_renamed_on_load(tmp_path):
    torch.manual_seed(0)
    model = nets.torchvision_like("densenet121", num_classes=5)
    # pre-0.4 checkpoints: 'norm.1'/'conv.2' names and no num_batches_tracked entries
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy and "features.conv0.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    loaded = nets.torchvision_like("densenet121", num_classes=5)
    nets.load_weights(loaded, path)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
