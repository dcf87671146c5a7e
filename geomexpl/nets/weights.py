"""Zoo weights: seeded training on first use, a user cache, and safe loading.

Weight files hold only tensors and plain metadata and are read with ``torch.load(weights_only=True)``,
so an untrusted file cannot run code. A corrupt, truncated or mismatched file raises
:class:`WeightFileError` (``pretrained`` then retrains and replaces it); it is never used silently.
"""
from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn

from geomexpl import data
from geomexpl.nets import zoo

FORMAT = 1
BUNDLED_DIR = Path(__file__).with_name("pretrained")
EPOCHS = {"mlp": 60, "photos": 12}  # training length per architecture or dataset; 30 epochs otherwise


def epochs(arch: str, dataset: str) -> int:
    """Training epochs of a zoo model: the architecture's, else the dataset's, else 30."""
    return EPOCHS.get(arch, EPOCHS.get(dataset, 30))


class WeightFileError(ValueError):
    """A weight file that cannot be used: unreadable, unsafe, or not for this architecture."""


def cache_dir() -> Path:
    """``$GEOMEXPL_CACHE``, else ``$XDG_CACHE_HOME/geomexpl``, else ``~/.cache/geomexpl``."""
    if os.environ.get("GEOMEXPL_CACHE"):
        return Path(os.environ["GEOMEXPL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "geomexpl"


def weight_path(arch: str, dataset: str, size: int, directory: Path | None = None) -> Path:
    """Where the weights of a zoo model live in ``directory`` (default: the user cache)."""
    return (directory or cache_dir()) / f"{arch}-{dataset}-{size}.pt"


def save_weights(model: nn.Module, path: Path, meta: dict) -> None:
    """Write atomically (temporary file, then rename): an interrupted save leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": FORMAT, "meta": meta, "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: str | Path) -> dict:
    """Load ``path`` into ``model`` (strictly) and return its metadata; a bare state_dict is accepted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors differ by failure; all mean "unusable file"
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
        if "weights_only" in text or "Weights only load failed" in text:
            reason = "it holds pickled Python objects besides tensors, which geomexpl never unpickles"
        else:
            reason = text.splitlines()[0] if text else type(err).__name__
        raise WeightFileError(f"weight file {path} is corrupt, truncated or unsafe to load: {reason}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightFileError(f"weight file {path} holds no state_dict of tensors")
    upgrade = getattr(model, "upgrade_state_dict", None)  # e.g. DenseNet's legacy key names
    state = upgrade(state) if callable(upgrade) else state
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightFileError(f"weight file {path} does not fit {type(model).__name__}: {mismatch}")
    model.load_state_dict(state, strict=True)
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightFileError(f"weight file {path} has NaN/inf in {bad[:3]}")
    return blob.get("meta", {}) if "state_dict" in blob else {}


def _state_mismatch(expected: dict, state: dict, show: int = 3) -> str:
    """'' when ``state`` fits; else a summary: missing / unexpected keys and shape mismatches, a few named."""
    def some(keys):
        keys = list(keys)
        return ", ".join(keys[:show]) + (f", ... ({len(keys) - show} more)" if len(keys) > show else "")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    parts = [f"{len(missing)} missing keys ({some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({some(unexpected)})" if unexpected else "",
             f"{len(shapes)} shape mismatches ({some(shapes)})" if shapes else ""]
    return "; ".join(p for p in parts if p)


def train(model: nn.Module, dataset: str, epochs: int = 30, lr: float = 2e-3, batch_size: int = 64,
          seed: int = 0, progress: bool = True, size: int | None = None,
          device: torch.device | str | None = None) -> dict:
    """Seeded Adam training with +-2 pixel random shifts; returns metadata incl. test accuracy.

    ``device`` (default: the model's): the model and the whole training set move there once; the
    shuffling and shifts are drawn from a seeded CPU generator, so every device sees the same batches.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    device = torch.device(device) if device is not None else _device_of(model)
    model.to(device)
    x, y = (t.to(device) for t in data.load(dataset, "train", size))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * -(-len(x) // batch_size))
    start = time.perf_counter()
    model.train()
    for _ in tqdm(range(epochs), desc=f"training {dataset}", unit="epoch", disable=not progress):
        order = torch.randperm(len(x), generator=gen).to(device)  # one upload per epoch
        for idx in order.split(batch_size):
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()  # host numbers: the same stream as before
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return {"dataset": dataset, "epochs": epochs, "seed": seed, "train_seconds": time.perf_counter() - start,
            "test_accuracy": accuracy(model, dataset, size=size), "size": x.shape[-1],
            "torch": str(torch.__version__), "device": device.type}


@torch.no_grad()
def accuracy(model: nn.Module, dataset: str, split: str = "test", size: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on a built-in split, evaluated on the model's device."""
    return accuracy_on(model, *data.load(dataset, split, size))


@torch.no_grad()
def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> float:
    """Top-1 accuracy of ``model`` on images ``x`` with labels ``y``, moved to the model's device, in
    batches of ``batch_size`` (None: one batch)."""
    device = _device_of(model)
    x, y = x.to(device), y.to(device)
    size = batch_size or len(x)
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(size), y.split(size)))
    return correct / len(x)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def pretrained(arch: str, dataset: str = "digits", weights: str | Path | None = None,
               progress: bool = True, retrain: bool = False, size: int | None = None) -> nn.Module:
    """A trained zoo model in eval mode with frozen parameters.

    ``weights`` loads a user's file for this architecture (never retrained: errors are raised).
    Otherwise the first usable file of the user cache (:func:`cache_dir`) and the weights bundled
    with the package is loaded. Without one (or with ``retrain``) the model is trained, seeded, and
    written atomically to the cache. An unusable cached file is reported and replaced. ``size``
    picks the input size (the dataset's default when None; one net per size).
    """
    spec = data.spec(dataset, size)
    model = zoo.build(arch, spec.channels, spec.num_classes, spec.size)
    if weights is not None:
        load_weights(model, weights)
        return model.eval().requires_grad_(False)
    candidates = [] if retrain else [weight_path(arch, dataset, spec.size, d) for d in (cache_dir(), BUNDLED_DIR)]
    for path in candidates:
        try:
            load_weights(model, path)
            return model.eval().requires_grad_(False)
        except FileNotFoundError:
            continue
        except WeightFileError as err:
            print(f"geomexpl: {err}; ignoring it", file=sys.stderr)
    meta = train(model, dataset, epochs=epochs(arch, dataset), progress=progress, size=spec.size)
    meta["arch"] = arch
    save_weights(model, weight_path(arch, dataset, spec.size), meta)
    return model.eval().requires_grad_(False)


def metadata(arch: str, dataset: str = "digits", directory: Path | None = None, size: int | None = None) -> dict:
    """The metadata (accuracy, training time, seed) stored with a zoo model's weights."""
    spec = data.spec(dataset, size)
    return load_weights(zoo.build(arch, spec.channels, spec.num_classes, spec.size),
                        weight_path(arch, dataset, spec.size, directory))
