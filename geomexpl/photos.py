"""The 'photos' data set: which photograph a crop comes from, over 10 natural RGB scenes.

The photographs ship inside scikit-image (``skimage.data``) and scikit-learn (``load_sample_images``);
nothing is downloaded. Each scene is one class; the motorcycle stereo pair (left and right views)
is one scene. Every photo is split along its long axis into two training regions (the outer
thirds, 0-33 % and 67-100 %) and a test region (the middle band, 42-58 %), with gaps of 9 % between
them: wider than the stereo pair's largest disparity (60 of 741 pixels, 8.1 %), so no test pixel,
and no other view of one, was seen in training. Square crops with a seeded random side (12-16 % of
the long side, capped by the short side and the region) are resized with
Lanczos filter (PIL) to ``size`` x ``size``; 128 x 128 is the same crops as 64 x 64 at a larger size.
"""
from __future__ import annotations

import functools

import numpy as np

SCENES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "motorcycle", "china", "flower")
CROPS = {"train": 96, "test": 16}  # crops per scene and split
REGIONS = {"train": ((0.0, 0.33), (0.67, 1.0)), "test": ((0.42, 0.58),)}  # fractions of the long axis
CROP_SIDE = (0.12, 0.16)  # fraction of the long side
SEED = 0


@functools.lru_cache(maxsize=None)
def scene_photos(scene: str) -> tuple[np.ndarray, ...]:
    """The [H, W, 3] uint8 photographs of one scene (two for the motorcycle stereo pair)."""
    if scene not in SCENES:
        raise ValueError(f"unknown photo scene {scene!r}; scenes are {SCENES}")
    if scene in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return (load_sample_image(f"{scene}.jpg"),)
    import skimage.data

    if scene == "motorcycle":
        left, right, _ = skimage.data.stereo_motorcycle()
        return left, right
    return (getattr(skimage.data, scene)(),)


def _crop_box(shape: tuple[int, int], split: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random (top, left, side) square inside the ``split`` region of an image of ``shape``."""
    h, w = shape
    long_axis = int(w >= h)  # 1: split along the width
    length, short = (w, h) if long_axis else (h, w)
    regions = REGIONS[split]
    lo, hi = (int(round(f * length)) for f in regions[int(rng.integers(len(regions)))])
    side = min(int(rng.uniform(*CROP_SIDE) * length), short, hi - lo)
    along = int(rng.integers(lo, hi - side + 1))
    across = int(rng.integers(0, short - side + 1))
    return (across, along, side) if long_axis else (along, across, side)


@functools.lru_cache(maxsize=8)
def _crops(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng([SEED, ("train", "test").index(split)])
    images, labels = [], []
    for label, scene in enumerate(SCENES):
        photos = scene_photos(scene)
        for i in range(CROPS[split]):
            photo = photos[i % len(photos)]
            top, left, side = _crop_box(photo.shape[:2], split, rng)
            patch = Image.fromarray(np.ascontiguousarray(photo[top:top + side, left:left + side, :3]))
            patch = patch.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            images.append(np.asarray(patch, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    # np.stack keeps the crops' channels-last memory order; torch 2.13's CPU backward of a ResNet in
    # train mode crashes (segfault) on such a tensor, so the crops are made C-contiguous here
    return np.ascontiguousarray(np.stack(images)), np.asarray(labels, dtype=np.int64)


def load(split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(crops [N, 3, size, size] in [0, 1], labels [N])``; 'all' is train then test (seeded, cached)."""
    if split == "all":
        parts = [_crops(s, size) for s in ("train", "test")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return _crops(split, size)
