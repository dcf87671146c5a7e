"""Numerical settings for accelerators (issue 19).

TF32: on an NVIDIA GPU, cuDNN convolutions use TF32 by default (10-bit mantissa), which would put
about 1e-3 relative error into float32 gradients, HVPs and curvatures. The geometry code
therefore runs its derivatives under :func:`exact_float32`, which turns TF32 off for matmuls and
convolutions for the duration of the call and restores the user's settings afterwards (it does
not switch to float64: a float64 model stays float64, a float32 one stays float32 but exact).

Determinism: :func:`deterministic` makes a seeded run repeatable on CUDA: it asks torch for
deterministic algorithms (ops without one, such as some scatter-adds and pooling backwards,
then raise instead of varying silently) and fixes cuDNN's choice of algorithm.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN convolutions inside the block (no effect on a CPU)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def deterministic(seed: int) -> None:
    """Seed torch and make its kernels deterministic (for a run that must repeat on a GPU)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
