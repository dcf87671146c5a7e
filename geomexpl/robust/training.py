"""Fine-tuning with a curvature-lowering defence (Dombrowski et al. 2022), and its cache.

The defences of :data:`DEFENCES`, each with one ``strength``:

* ``plain``: no regulariser (the baseline; ``strength`` must be 0);
* ``weight_decay``: Adam's coupled L2 term, i.e. loss + strength/2 ||w||^2 (the bound on the
  Hessian grows with the weight norms);
* ``softplus``: strength = beta: the softplus_beta twin of the model is trained (it shares the
  parameters) and returned, so the returned model is smooth;
* ``hessian``: loss + strength * mean Hutchinson estimate of ||H||_F^2 (:func:`hessian_norm_penalty`);
* ``alignment``: loss + strength * mean local gradient alignment (:func:`gradient_alignment_penalty`).

Fine-tuning keeps batch norm in eval mode (its running statistics frozen): the cross-entropy and the
penalty then see the same deployed function. With batch statistics in the cross-entropy and running
ones in the penalty, a penalty could flatten the deployed function while the batch-statistics one
kept classifying (seen on the digits VGG after one epoch: the eval-mode accuracy collapsed).
Dropout is on for the cross-entropy and off for the penalty.
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
import sys
import time
from pathlib import Path

import torch
from torch import nn

from geomexpl import data
from geomexpl.checks import check_smooth, check_tensor
from geomexpl.nets import softplus, weights, zoo
from geomexpl.robust.penalties import (EXACT_ADVICE, _alignment, _hessian_norm, check_alignment_options,
                                       check_hessian_options)

DEFENCES = ("plain", "weight_decay", "softplus", "hessian", "alignment")
PENALISED = ("hessian", "alignment")
EPOCHS = 5
OPTIONS = ("epochs", "lr", "batch_size", "probes", "hessian_method", "h", "radius", "kind")  # stored, compared on load


def check_defence(defence: str, strength: float) -> float:
    """The strength as a float, or a ValueError naming the problem."""
    if defence not in DEFENCES:
        raise ValueError(f"unknown defence {defence!r}; choose one of {DEFENCES}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or math.isnan(strength):
        raise ValueError(f"strength must be a number, got {strength!r}")
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be finite and >= 0, got {strength}")
    if defence == "softplus" and strength == 0:
        raise ValueError("the softplus defence's strength is beta and must be > 0")
    if defence == "plain" and strength != 0:
        raise ValueError(f"the plain defence has no strength (pass 0), got {strength}")
    return float(strength)


def _training_data(dataset, size, test):
    """(x, y, (x_test, y_test) or None, bounds or None) from a built-in name or an (x, y) pair."""
    if isinstance(dataset, str):
        spec = data.spec(dataset, size)
        test = data.load(dataset, "test", spec.size) if test is None else test
        return (*data.load(dataset, "train", spec.size), test, (spec.lower, spec.upper))
    if not (isinstance(dataset, (tuple, list)) and len(dataset) == 2):
        raise ValueError("dataset must be a built-in name or an (images, labels) pair of tensors")
    x, y = dataset
    check_tensor(x, "dataset images", min_dim=2)
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.is_floating_point() or len(y) != len(x):
        raise ValueError(f"dataset labels must be a [{len(x)}] integer tensor")
    return x, y, test, None


def finetune(model: nn.Module, dataset, defence: str, strength: float, *, epochs: int = EPOCHS,
             lr: float = 5e-4, batch_size: int = 64, seed: int = 0, size: int | None = None, probes: int = 4,
             hessian_method: str = "fd", h: float = 1e-2, radius: float = 0.05, kind: str = "both",
             test=None, progress: bool = True, device=None) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of the classifier ``model`` with ``defence`` (the model itself is untouched).

    ``dataset``: a built-in name (its train split at ``size``; accuracy on its test split) or an
    ``(images, labels)`` pair (accuracy on ``test`` = (images, labels) when given, else None).
    Seeded Adam (constant ``lr``), +-2 pixel random shifts of image batches as in
    :func:`geomexpl.nets.weights.train`. Returns (the model in eval mode with frozen parameters, a
    softplus twin for the softplus defence; metadata incl. test accuracy and the mean penalty of
    the last epoch, None for the unpenalised defences).
    """
    from tqdm.auto import tqdm

    strength = check_defence(defence, strength)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(lr, numbers.Real) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    check_hessian_options(probes, hessian_method, h)
    check_alignment_options(radius, kind)
    x, y, test, bounds = _training_data(dataset, size, test)

    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters to fine-tune")
    device = torch.device(device) if device is not None else params[0].device
    torch.manual_seed(seed)
    net = copy.deepcopy(model).to(device).requires_grad_(True)
    x, y = x.to(device=device, dtype=params[0].dtype), y.to(device)
    try:
        net = softplus.softplus_twin(net, strength) if defence == "softplus" else net
    except softplus.UnsupportedActivationError as err:
        raise ValueError(f"the softplus defence cannot use this model: {err}") from None
    _check_forward(net, x[:1], defence, hessian_method)

    gen = torch.Generator().manual_seed(seed)  # shuffling and shifts: the same stream as weights.train
    noise = torch.Generator().manual_seed(seed + 7919)  # probes / neighbours, separate so strength 0 == plain
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=strength if defence == "weight_decay" else 0.0)
    penalty_fn = penalty_function(net, defence, probes=probes, hessian_method=hessian_method, h=h, radius=radius,
                                  kind=kind, bounds=bounds, generator=noise)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc=f"{defence} fine-tuning", unit="epoch", disable=not progress)
    for _ in bar:
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss and penalty sums of the epoch
        for idx in torch.randperm(len(x), generator=gen).to(device).split(batch_size):
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3)) if x.dim() == 4 else x[idx]
            loss, pen = train_step(net, opt, xb, y[idx], penalty_fn, strength)
            totals += torch.stack([loss, pen if pen is not None else torch.zeros_like(loss)]) * len(idx)
        means = (totals / len(x)).tolist()
        if not all(math.isfinite(m) for m in means):
            raise RuntimeError(f"{defence} fine-tuning diverged (loss {means[0]}, penalty {means[1]}): "
                               "lower the strength or lr")
        bar.set_postfix(loss=f"{means[0]:.4g}", **({"penalty": f"{means[1]:.4g}"} if penalty_fn else {}))
    net.eval().requires_grad_(False)
    meta = {"defence": defence, "strength": strength, "epochs": epochs, "seed": seed, "lr": lr,
            "batch_size": batch_size, "probes": probes, "hessian_method": hessian_method, "h": h,
            "radius": radius, "kind": kind, "train_seconds": time.perf_counter() - start,
            "test_accuracy": None if test is None else weights.accuracy_on(net, test[0].to(x.dtype), test[1],
                                                                            batch_size=512),
            "train_loss": means[0],
            "penalty": means[1] if penalty_fn is not None else None, "size": int(x.shape[-1]),
            "dataset": dataset if isinstance(dataset, str) else None, "torch": str(torch.__version__),
            "device": device.type}
    if defence == "softplus":
        meta["beta"] = strength
    return net, meta


def penalty_function(net: nn.Module, defence: str, *, probes: int = 4, hessian_method: str = "fd", h: float = 1e-2,
                     radius: float = 0.05, kind: str = "both", bounds=None, generator=None):
    """``(xb, yb) -> [B]`` penalty of a penalised defence on ``net``, None for the others (inputs unchecked)."""
    if defence == "hessian":
        return lambda xb, yb: _hessian_norm(net, xb, yb, probes, hessian_method, h, generator)
    if defence == "alignment":
        return lambda xb, yb: _alignment(net, xb, yb, radius, kind, bounds, generator)
    return None


def train_step(net: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor, penalty=None,
               strength: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One Adam step on cross-entropy (dropout on) + strength * mean penalty (eval mode), batch norm
    on its frozen running statistics in both; returns the detached (loss, mean penalty or None)."""
    finetune_mode(net)
    loss = nn.functional.cross_entropy(net(xb), yb)
    total, pen = loss, None
    if penalty is not None:
        net.eval()
        pen = penalty(xb, yb).mean()
        finetune_mode(net)
        total = loss + strength * pen
    opt.zero_grad()
    total.backward()
    opt.step()
    return loss.detach(), None if pen is None else pen.detach()


def finetune_mode(net: nn.Module) -> nn.Module:
    """Train mode but for batch norm, which keeps its running statistics (eval mode)."""
    net.train()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return net


def _check_forward(net: nn.Module, x1: torch.Tensor, defence: str, hessian_method: str) -> None:
    """Run one example through the net (eval mode: no statistics change) before any training."""
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(x1)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ValueError(f"the model must map a batch to [B, classes] logits, got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        if defence == "hessian" and hessian_method == "exact":
            check_smooth(net, x1, "the hessian defence with hessian_method='exact'", EXACT_ADVICE)
    except softplus.UnsupportedActivationError as err:
        raise ValueError(f"the {defence} defence cannot use this model: {err}") from None
    finally:
        net.train(was)


DEFAULTS = {k: inspect.signature(finetune).parameters[k].default for k in OPTIONS}  # of the stored options


def robust_path(arch: str, dataset: str, defence: str, strength: float, seed: int = 0, size: int | None = None,
                directory: Path | None = None) -> Path:
    """Where a fine-tuned zoo model lives: ``ARCH-DATASET-SIZE-DEFENCE-STRENGTH-sSEED.pt`` in ``directory``
    (default: the ``robust`` folder of the user cache, :func:`geomexpl.nets.cache_dir`)."""
    strength = check_defence(defence, strength)
    spec = data.spec(dataset, size)
    return (Path(directory) if directory else weights.cache_dir() / "robust") / \
        f"{arch}-{dataset}-{spec.size}-{defence}-{strength:g}-s{seed}.pt"


def robust_pretrained(arch: str, dataset: str, defence: str, strength: float, seed: int = 0, epochs: int = EPOCHS,
                      *, size: int | None = None, directory: Path | None = None, retrain: bool = False,
                      progress: bool = True, device=None, **options) -> tuple[nn.Module, dict]:
    """(model, metadata) of zoo ``arch`` fine-tuned from ``nets.pretrained(arch, dataset)`` with ``defence``.

    Loaded from :func:`robust_path` when a usable file made with the same options is there (safe
    loader; for the softplus defence the stored beta gives the twin); otherwise fine-tuned with
    :func:`finetune` (``options``: its keyword arguments) and saved atomically. An unusable file or
    one made with other options is reported and replaced. The model is returned on the CPU.
    """
    strength = check_defence(defence, strength)
    if arch not in zoo.ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {zoo.ARCHS}")
    spec = data.spec(dataset, size)
    path = robust_path(arch, dataset, defence, strength, seed, spec.size, directory)
    wanted = {**DEFAULTS, **options, "epochs": epochs}
    if not retrain:
        model = zoo.build(arch, spec.channels, spec.num_classes, spec.size)
        try:
            meta = weights.load_weights(model, path)
            stale = {k: (meta.get(k), wanted[k]) for k in OPTIONS if meta.get(k) != wanted[k]}
            if not stale and meta.get("defence") == defence and meta.get("strength") == strength:
                model = softplus.softplus_twin(model, meta["beta"]) if defence == "softplus" else model
                return model.eval().requires_grad_(False), meta
            print(f"geomexpl: {path} was made with other options {stale}; fine-tuning again", file=sys.stderr)
        except FileNotFoundError:
            pass
        except weights.WeightFileError as err:
            print(f"geomexpl: {err}; fine-tuning again", file=sys.stderr)
    base = weights.pretrained(arch, dataset, progress=progress, size=spec.size)
    model, meta = finetune(base, dataset, defence, strength, epochs=epochs, seed=seed, size=spec.size,
                           progress=progress, device=device, **options)
    model.cpu()  # weight files hold CPU tensors
    meta["arch"] = arch
    weights.save_weights(softplus.unwrap(model)[0], path, meta)
    return model, meta


