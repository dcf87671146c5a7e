"""Datasets that ship inside packages (no download), a user's image folder, and value bounds.

Every dataset declares the range of its values per channel after any normalisation
(:class:`DatasetSpec` ``lower``/``upper``). The attack clamps to it, LRP's zB rule uses it, and
SmoothGrad's noise level is relative to it (supplement D: sigma = n (x_max - x_min)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geomexpl import photos

SPLITS = ("train", "test", "all")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class DatasetSpec:
    """What a model of this dataset consumes: [N, channels, size, size] in [lower, upper]."""

    name: str
    channels: int
    size: int
    num_classes: int
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    classes: tuple[str, ...]

    def bounds(self, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel bounds as [C] tensors (on ``like``'s device and dtype when given)."""
        kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
        return torch.tensor(self.lower, **kw), torch.tensor(self.upper, **kw)


def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:, None] / 16.0, digits.target


def _faces_raw() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import lfw_subset

    faces = lfw_subset()  # 100 faces then 100 non-faces, 25x25 in [0, 1]
    labels = np.r_[np.ones(100, dtype=np.int64), np.zeros(100, dtype=np.int64)]
    return faces[:, None], labels


_BUILTIN = {
    # name: (raw loader, default size, classes, channels); all in [0, 1]. The photos have their own
    # region split (geomexpl.photos) instead of a raw loader.
    "digits": (_digits_raw, 32, tuple(str(i) for i in range(10)), 1),
    "faces": (_faces_raw, 32, ("non-face", "face"), 1),
    "photos": (None, 64, photos.SCENES, 3),
}


def names() -> tuple[str, ...]:
    """Names of the built-in datasets."""
    return tuple(_BUILTIN)


def spec(name: str, size: int | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of a built-in dataset at ``size`` (its default when None)."""
    if name not in _BUILTIN:
        raise ValueError(f"unknown dataset {name!r}; built-in datasets are {names()} "
                         "(use load_folder for your own images)")
    _, default_size, classes, channels = _BUILTIN[name]
    return DatasetSpec(name, channels, size or default_size, len(classes), (0.0,) * channels, (1.0,) * channels,
                       classes)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N, C, h, w] to [N, C, size, size], clamped to the input's range."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(float(images.min()), float(images.max()))


def stratified_split(labels: np.ndarray, split: str, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of ``split`` in a fixed, seeded split that keeps the class proportions."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.extend(members[: int(round(test_fraction * len(members)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(is_test if split == "test" else ~is_test)


def load(name: str, split: str = "test", size: int | None = None,
         dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, C, size, size] in [0, 1], labels [N])`` of a built-in dataset.

    ``load('digits', 'test')``: 359 of scikit-learn's 1797 digits, upsampled from 8x8 to 32x32.
    ``load('faces', 'train')``: scikit-image's LFW subset (faces vs non-faces), from 25x25.
    ``load('photos', 'test')``: 160 RGB 64x64 crops of 10 photographs, labelled by the photograph
    (train and test crops come from disjoint regions; see :mod:`geomexpl.photos`).
    """
    spec_ = spec(name, size)
    if name == "photos":
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        x, y = photos.load(split, spec_.size)
        return torch.as_tensor(x).to(dtype), torch.as_tensor(y)
    raw_images, raw_labels = _BUILTIN[name][0]()
    idx = stratified_split(raw_labels, split)
    images = torch.as_tensor(raw_images[idx], dtype=torch.float32)
    images = resize(images, spec_.size).to(dtype)
    return images, torch.as_tensor(raw_labels[idx], dtype=torch.long)


def load_folder(root: str | Path, size: int = 32, channels: int = 1, split: str = "all",
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, DatasetSpec]:
    """Load ``root/<class>/<image>`` files: ``(images [N, channels, size, size] in [0, 1], labels, spec)``.

    Classes are the sub-folder names in sorted order. ``channels`` is 1 (grey) or 3 (RGB).
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders (expected root/<class>/<image>)")
    images, labels = [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"cannot read image {path}: {err}") from err
            arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
            images.append(resize(torch.from_numpy(arr)[None], size)[0])
            labels.append(label)
    if not images:
        raise ValueError(f"image folder {root} contains no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    labels_np = np.asarray(labels)
    idx = stratified_split(labels_np, split)
    spec_ = DatasetSpec(root.name, channels, size, len(classes), (0.0,) * channels, (1.0,) * channels,
                        tuple(classes))
    return torch.stack(images)[idx].to(dtype), torch.as_tensor(labels_np[idx]), spec_
