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
