"""A simulated accelerator for CPU CI (issue 19): fake tensors on a device registered from Python.

``simulated_device()`` registers PrivateUse1 as the Python backend ``simdev``
(``torch.utils.backend_registration``), then runs the block under three modes:

* ``FakeTensorMode``: tensors carry shape, dtype and device but no data, so a step costs almost
  nothing, and an op mixing a ``simdev`` tensor with a CPU tensor that is not a 0-dim scalar
  raises (FakeTensor's device propagation) -- a device mix cannot pass silently;
* a ``TorchFunctionMode`` that turns ``torch.tensor(data, device=simdev)`` into a host tensor plus
  an upload: torch builds such tensors in C++ below the dispatcher, out of the modes' sight;
* a ``TorchDispatchMode`` (:class:`Counter`) that counts host syncs (``aten._local_scalar_dense``,
  ``aten.is_nonzero``, ``aten.item``, data-dependent shapes such as ``aten.nonzero``) and
  cross-device copies (uploads host -> device, downloads device -> host).

A fake tensor has no value: a sync returns the answer of valid input (``all(...)`` true,
``any(...)`` false, 0 for ``item``, an empty ``nonzero``), so every check takes its "valid" branch. Reads of host scalars (Adam's step
count) are answered by FakeTensor's constant tracking and are not device syncs (without a tracked constant such a read answers 1, which keeps Adam's bias correction
finite).
"""
from __future__ import annotations

from collections import Counter as Tally
import weakref
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

NAME = "simdev"
_SYNC_OPS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item"}
_DATA_DEPENDENT = {"aten.nonzero": lambda t: torch.empty((0, t.dim()), dtype=torch.long, device=t.device),
                   "aten.equal": lambda t: True}
_FACTORIES_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


def register() -> torch.device:
    """PrivateUse1 as the Python backend ``simdev`` (once per process)."""
    if torch._C._get_privateuse1_backend_name() != NAME:
        from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

        _setup_privateuseone_for_python_backend(rename=NAME)
    return torch.device(NAME, 0)


def _on_device(d) -> bool:
    return d is not None and torch.device(d).type == NAME


class Counter(TorchDispatchMode):
    """Counts host syncs and cross-device copies; ``tally`` maps a kind to its count."""

    def __init__(self, fake):
        super().__init__()
        self.fake = fake
        self.tally: Tally = Tally()
        self._all_results: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self.log: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor

        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in _SYNC_OPS and tensors and tensors[0].device.type == NAME:
            self._count("sync", name)
            if self._all_results.get(id(tensors[0])) is tensors[0]:
                return True  # the "valid input" answer: all(...) holds, any(...) does not
            return False if tensors[0].dtype == torch.bool or name == "aten.is_nonzero" else 0
        if name == "aten._local_scalar_dense" and tensors and isinstance(tensors[0], FakeTensor):
            constant = tensors[0].constant  # a host scalar (Adam's step count): not a device sync
            return constant.item() if constant is not None else 1
        if name in _DATA_DEPENDENT and tensors and tensors[0].device.type == NAME:
            self._count("sync", name)
            return _DATA_DEPENDENT[name](tensors[0])
        if name == "aten._to_copy" and "device" in kwargs:
            self._copy(tensors[0].device, torch.device(kwargs["device"]), name)
        if name == "aten.copy_":
            self._copy(args[1].device, args[0].device, name)
        args, kwargs = tree_map(lambda a: self.fake.from_tensor(a)
                                if isinstance(a, torch.Tensor) and not isinstance(a, FakeTensor) else a, (args, kwargs))
        out = func(*args, **kwargs)
        if name == "aten.all":
            self._all_results[id(out)] = out
        return out

    def _copy(self, src: torch.device, dst: torch.device, name: str) -> None:
        if src.type != NAME and dst.type == NAME:
            self._count("upload", name)
        elif src.type == NAME and dst.type != NAME:
            self._count("download", name)
            self._count("sync", name)

    def _count(self, kind: str, what: str) -> None:
        self.tally[kind] += 1
        self.log.append(f"{kind}: {what}")


class _DataFactories(TorchFunctionMode):
    """``torch.tensor(data, device=simdev)`` as a host tensor followed by a (counted) upload."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES_FROM_DATA and _on_device(kwargs.get("device")) and not (
                isinstance(args[0], torch.Tensor) and args[0].device.type == NAME):
            host = func(*args, **{**kwargs, "device": "cpu"})
            return host.to(kwargs["device"])
        return func(*args, **kwargs)


# At import, i.e. during pytest's collection, before any test runs a backward pass: the autograd
# engine sizes its per-device queues when it first starts, and a device registered later has none.
register()


@contextmanager
def simulated_device():
    """Yields ``(device, counter)``: inside, tensors made on ``device`` are fake and counted."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    device = register()
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    counter = Counter(fake)
    with fake, _DataFactories(), counter:
        yield device, counter
