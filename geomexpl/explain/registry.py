"""The table of explanation methods: name -> function ``(model, x, target, **options) -> h``.

A method function receives ``x`` that requires grad, the target classes as a [B] long tensor and
the model to explain (a :class:`~geomexpl.nets.SoftplusTwin` when beta-smoothed). It returns the
explanation h(x) with the shape of x, built from differentiable torch operations only.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import nn

Method = Callable[..., torch.Tensor]
METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    """Decorator adding a method function to :data:`METHODS` under ``name``."""
    def add(fn: Method) -> Method:
        if name in METHODS:
            raise ValueError(f"explanation method {name!r} is registered twice")
        METHODS[name] = fn
        return fn
    return add


_CAPTURE: ContextVar = ContextVar("geomexpl_capture", default=None)
_KEEP_GRAPH: ContextVar = ContextVar("geomexpl_keep_graph", default=True)
_TRUSTED: ContextVar = ContextVar("geomexpl_trusted", default=False)


@contextmanager
def trusted_inputs() -> Iterator[None]:
    """Inside: inputs were validated at the entry point (``manipulate``), so methods skip the checks
    that read tensor values (each a host sync on an accelerator) and take ``target`` as a [B] tensor."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def inputs_trusted() -> bool:
    return _TRUSTED.get()


@contextmanager
def keep_graph(flag: bool) -> Iterator[None]:
    """Whether gradients inside methods are built with ``create_graph`` (needed only when the caller
    differentiates the explanation; without it a plain explanation costs about 30% less)."""
    token = _KEEP_GRAPH.set(flag)
    try:
        yield
    finally:
        _KEEP_GRAPH.reset(token)


def graph_kept() -> bool:
    return _KEEP_GRAPH.get()


@contextmanager
def capture_logits(x: torch.Tensor) -> Iterator[dict]:
    """Keep the logits a method computes for exactly ``x`` (same tensor object) in the yielded dict.

    The attack's output term reuses the explanation's own forward pass this way instead of
    running the network a second time.
    """
    box: dict = {}
    token = _CAPTURE.set((x, box))
    try:
        yield box
    finally:
        _CAPTURE.reset(token)


def offer_logits(x: torch.Tensor, logits: torch.Tensor) -> None:
    """Hand the logits computed for ``x`` to an active :func:`capture_logits` of that same tensor."""
    capture = _CAPTURE.get()
    if capture is not None and capture[0] is x:
        capture[1]["logits"] = logits


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x), offered to an active :func:`capture_logits` of x."""
    out = model(x)
    offer_logits(x, out)
    return out


def target_logit(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """g_k(x) for each example: the logit of its target class, [B]."""
    out = model_output(model, x)
    return out.gather(1, target[:, None])[:, 0]


def input_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """grad_x g_k(x), differentiable (create_graph) unless :func:`keep_graph` turned that off."""
    (grad,) = torch.autograd.grad(target_logit(model, x, target).sum(), x, create_graph=graph_kept())
    return grad
