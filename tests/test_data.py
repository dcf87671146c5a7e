"""Datasets: shapes, value bounds, the seeded stratified split and the image-folder loader."""
import numpy as np
import pytest
import torch

from geomexpl import data


@pytest.mark.parametrize("name,n_total,classes", [("digits", 1797, 10), ("faces", 200, 2)])
def test_builtin_shapes_and_bounds(name, n_total, classes):
    spec = data.spec(name)
    train_x, train_y = data.load(name, "train")
    test_x, test_y = data.load(name, "test")
    assert train_x.shape[1:] == test_x.shape[1:] == (spec.channels, spec.size, spec.size) == (1, 32, 32)
    assert len(train_x) + len(test_x) == n_total
    assert abs(len(test_x) - 0.2 * n_total) <= classes
    lo, hi = spec.bounds()
    for x in (train_x, test_x):
        assert x.dtype == torch.float32
        assert float(x.min()) >= float(lo.min()) and float(x.max()) <= float(hi.max())
        assert float(x.max()) > 0.9  # the range is used, not squashed
    assert set(test_y.tolist()) == set(range(classes)) == set(train_y.tolist())


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    test = data.stratified_split(labels, "test")
    train = data.stratified_split(labels, "train")
    assert set(test).isdisjoint(train) and len(test) + len(train) == len(labels)
    assert np.bincount(labels[test]).tolist() == [2, 4, 6, 8]
    np.testing.assert_array_equal(test, data.stratified_split(labels, "test"))


def test_resize_sizes_and_native_digits():
    x, _ = data.load("digits", "test", size=8, dtype=torch.float64)
    assert x.shape[-2:] == (8, 8) and x.dtype == torch.float64
    assert set(np.unique(x.numpy() * 16).round(6)) <= set(range(17))  # 8x8 is the raw data


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.load("cifar")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load("digits", "validation")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, value in (("cats", 200), ("dogs", 50)):
        (tmp_path / cls).mkdir()
        for i in range(5):
            pixels = np.clip(rng.normal(value, 10, (20, 30, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    x, y, spec = data.load_folder(tmp_path, size=16, channels=3)
    assert x.shape == (10, 3, 16, 16) and y.tolist() == [0] * 5 + [1] * 5
    assert spec.classes == ("cats", "dogs") and spec.lower == (0.0,) * 3 and spec.upper == (1.0,) * 3
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert float(x[:5].mean()) > float(x[5:].mean())  # the pixel values made it through


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.load_folder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        data.load_folder(tmp_path)


def test_photos_rgb_scenes_bounds_and_cache():
    from geomexpl import photos

    spec = data.spec("photos")
    assert (spec.channels, spec.size, spec.num_classes) == (3, 64, 10) and spec.lower == (0.0,) * 3
    x, y = data.load("photos", "test")
    assert x.shape == (160, 3, 64, 64) and y.bincount().tolist() == [16] * 10
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) > 0.9
    assert len(data.load("photos", "train")[0]) == 960 and len(data.load("photos", "all")[0]) == 1120
    again, _ = data.load("photos", "test")
    assert torch.equal(x, again)  # seeded (and cached)
    assert (x[:, 0] - x[:, 1]).abs().mean() > 0.02  # colour, not grey
    big, y_big = data.load("photos", "test", size=128)  # the same crops, larger
    assert big.shape == (160, 3, 128, 128) and torch.equal(y, y_big)
    small = torch.nn.functional.avg_pool2d(big, 2)
    assert float((small - x).abs().mean()) < 0.02
    assert photos.scene_photos("motorcycle")[0].shape == photos.scene_photos("motorcycle")[1].shape


def test_photo_train_and_test_regions_are_disjoint():
    from geomexpl import photos

    rng = np.random.default_rng(0)
    disparity = 60 / 741  # the stereo pair's largest disparity, as a fraction of its width
    for shape in ((500, 741), (872, 1000), (512, 512), (1000, 300)):
        long_axis = int(shape[1] >= shape[0])
        length = shape[long_axis]
        spans = {}
        for split in ("train", "test"):
            boxes = [photos._crop_box(shape, split, rng) for _ in range(200)]
            assert all(side >= 0.1 * length or side == min(shape) for *_, side in boxes)
            spans[split] = [(b[long_axis], b[long_axis] + b[2]) for b in boxes]
            assert all(0 <= b[1 - long_axis] and b[1 - long_axis] + b[2] <= shape[1 - long_axis] for b in boxes)
        for lo, hi in spans["test"]:
            for t_lo, t_hi in spans["train"]:
                assert hi + disparity * length <= t_lo or t_hi + disparity * length <= lo


@pytest.mark.parametrize("name", ["digits", "faces", "photos"])
def test_built_in_images_are_c_contiguous(name):
    # a channels-last photo tensor made torch 2.13's CPU backward of a train-mode ResNet segfault
    x, _ = data.load(name, "train")
    assert x.is_contiguous()
