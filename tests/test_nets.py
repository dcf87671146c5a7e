"""Model zoo: every architecture's test accuracy, weight caching, safe and strict weight loading."""
import time

import pytest
import torch
from torch import nn

from geomexpl import data, nets
from geomexpl.nets import weights, zoo

MIN_DIGITS_ACCURACY = 0.97  # the target for every zoo architecture on digits at 32x32
MIN_FACES_ACCURACY = 0.85   # 40 test images of faces vs non-faces: one error costs 2.5 points


@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_zoo_accuracy_on_digits(arch):
    model = nets.pretrained(arch, "digits", progress=False)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    acc = weights.accuracy(model, "digits")
    assert acc >= MIN_DIGITS_ACCURACY, f"{arch} reaches only {acc:.3f} on digits"


@pytest.mark.parametrize("arch", zoo.ARCHS)
def test_zoo_accuracy_on_faces(arch):
    acc = weights.accuracy(nets.pretrained(arch, "faces", progress=False), "faces")
    assert acc >= MIN_FACES_ACCURACY, f"{arch} reaches only {acc:.3f} on faces"


def test_pretrained_loads_fast_and_is_deterministic():
    first = nets.pretrained("vgg", "digits", progress=False)
    start = time.perf_counter()
    second = nets.pretrained("vgg", "digits", progress=False)
    assert time.perf_counter() - start < 1.0
    x, _ = data.load("digits", "test")
    torch.testing.assert_close(first(x[:8]), second(x[:8]), rtol=0, atol=0)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A user cache with nothing in it and no bundled weights: pretrained must train."""
    monkeypatch.setenv("GEOMEXPL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path / "no-bundle")
    return tmp_path / "cache"


def test_trains_on_first_use_then_loads_from_cache(empty_cache, monkeypatch):
    model = nets.pretrained("mlp", "digits", progress=False)
    path = weights.weight_path("mlp", "digits", 32)
    assert path.parent == empty_cache and path.is_file()
    meta = nets.metadata("mlp", "digits")
    assert meta["test_accuracy"] >= MIN_DIGITS_ACCURACY and meta["seed"] == 0
    monkeypatch.setattr(weights, "train", lambda *a, **k: pytest.fail("retrained although cached"))
    again = nets.pretrained("mlp", "digits", progress=False)
    for a, b in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "nan", "wrong_arch", "pickle_payload"])
def test_bad_weight_files_are_refused(tmp_path, damage):
    path = tmp_path / "w.pt"
    good = zoo.build("mlp")
    weights.save_weights(good, path, {"arch": "mlp"})
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "nan":
        state = good.state_dict()
        state["1.weight"][0, 0] = float("nan")
        torch.save(state, path)
    elif damage == "wrong_arch":
        weights.save_weights(zoo.build("vgg"), path, {})
    elif damage == "pickle_payload":
        torch.save({"state_dict": good.state_dict(), "evil": Exploit()}, path)
    with pytest.raises(weights.WeightFileError, match=str(path)):
        weights.load_weights(zoo.build("mlp"), path)


class Exploit:
    """Unpickling this would run code; weights_only loading must refuse the file instead."""

    def __reduce__(self):
        return (pytest.fail, ("unpickled arbitrary code",))


def test_corrupt_cache_is_replaced_not_used(empty_cache, capsys):
    path = weights.weight_path("mlp", "digits", 32)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"corrupt")
    model = nets.pretrained("mlp", "digits", progress=False)
    assert "corrupt" in capsys.readouterr().err
    assert weights.accuracy(model, "digits") >= MIN_DIGITS_ACCURACY
    weights.load_weights(zoo.build("mlp"), path)  # the replacement is a valid file


def test_user_weights_file(tmp_path):
    trained = nets.pretrained("mlp", "digits", progress=False)
    path = tmp_path / "mine.pt"
    torch.save(trained.state_dict(), path)  # a bare state_dict, as users save them
    mine = nets.pretrained("mlp", "digits", weights=path)
    x, _ = data.load("digits", "test")
    torch.testing.assert_close(mine(x), trained(x), rtol=0, atol=0)
    with pytest.raises(weights.WeightFileError, match="does not fit"):
        nets.pretrained("alexnet", "digits", weights=path)
    with pytest.raises(FileNotFoundError):
        nets.pretrained("mlp", "digits", weights=tmp_path / "missing.pt")


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture 'lenet'"):
        zoo.build("lenet")


def test_zoo_models_use_only_relu_and_trace():
    for arch in zoo.ARCHS:
        model = zoo.build(arch)
        nets.check_activations(model)
        assert any(isinstance(m, nn.ReLU) for m in model.modules())
        torch.fx.symbolic_trace(model)


PHOTO_NETS = ("vgg", "resnet")
MIN_PHOTOS_ACCURACY = 0.65  # what the bundled 64x64 and 128x128 photo nets reach (experiments/results/photos/
#                             accuracy.csv); the 90 % target is not reached (docs/photos.md)


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("arch", PHOTO_NETS)
def test_bundled_photo_nets(arch, size):
    assert weights.weight_path(arch, "photos", size, weights.BUNDLED_DIR).is_file(), "one bundled net per size"
    model = nets.pretrained(arch, "photos", progress=False, size=size)
    assert model(torch.rand(2, 3, size, size)).shape == (2, 10)
    acc = weights.accuracy(model, "photos", size=size)
    assert acc >= MIN_PHOTOS_ACCURACY, f"{arch} reaches only {acc:.3f} on photos at {size}"
    assert weights.metadata(arch, "photos", weights.BUNDLED_DIR, size=size)["test_accuracy"] == pytest.approx(acc)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_zoo_sizes(size):
    for arch in zoo.ARCHS:
        model = zoo.build(arch, 3, 10, size).eval()
        assert model(torch.rand(1, 3, size, size)).shape == (1, 10), arch
    with pytest.raises(ValueError, match="multiple of 32, got size 48"):
        zoo.build("vgg", 3, 10, 48)
