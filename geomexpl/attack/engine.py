"""The manipulation attack of paper sec. 2.2, batched: every example has its own target and loss.

    L_b = w_expl * MSE(map(h(x_adv_b)), h^t_b) + w_out * MSE(out(x_adv_b), out(x_b))      (eq. 4)

minimised with Adam on x_adv, clamped to the valid range after every step (and projected onto an
optional L-inf / L2 ball). The loss of the batch is the sum of the per-example losses, and the model
runs in eval mode, so examples never interact: Adam is element-wise and each example's gradient is
its own. Differentiability comes from the softplus_beta twin with beta growing from beta0 to beta_e
(supplement A.1); the result is evaluated on the original ReLU model. When the attacked
explanation is beta-smoothed (``smooth_beta``) or SmoothGrad (``smoothgrad``), it is evaluated with
that same smoothing: that is the attack on the defence (supplement D).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from geomexpl import metrics
from geomexpl.attack.presets import Preset, preset as table_row
from geomexpl.attack.surrogate import fold_batchnorm, on_device
from geomexpl.checks import channel_bounds, check_eval, check_in_range, check_tensor
from geomexpl.explain import METHODS, explain, explain_trusted, relevance_map, relevance_map_trusted, resolve_target
from geomexpl.explain.registry import capture_logits
from geomexpl.nets import beta_schedule, softplus_twin


@dataclass
class AttackConfig:
    """Everything that determines an attack (recorded with its results)."""

    method: str
    steps: int
    lr: float
    w_expl: float
    w_out: float
    beta_growth: tuple[float, float] | None
    output: str = "softmax"
    smooth_beta: float | None = None
    smoothgrad: int | None = None
    noise_level: float = 0.2
    linf: float | None = None
    l2: float | None = None
    record_every: int = 0
    bounds: tuple = (0.0, 1.0)
    method_options: dict = field(default_factory=dict)


@dataclass
class AttackResult:
    """x, x_adv, maps of both and the target, ReLU outputs before/after, per-step losses, path."""

    x: torch.Tensor
    x_adv: torch.Tensor
    target_map: torch.Tensor
    map_x: torch.Tensor
    map_adv: torch.Tensor
    out_x: torch.Tensor
    out_adv: torch.Tensor
    target: torch.Tensor
    losses: dict[str, torch.Tensor]          # name -> [steps, B]
    path: torch.Tensor | None                # [T, B, ...] every record_every steps, x first, x_adv last
    path_steps: list[int]
    config: AttackConfig

    def metrics(self) -> dict[str, torch.Tensor]:
        """Per-example metrics of the papers (sec. 2.2, supplement B), each a [B] tensor."""
        change = metrics.output_change(self.out_adv, self.out_x)
        p_x, p_adv = self.out_x.softmax(1), self.out_adv.softmax(1)
        k = self.target[:, None]
        return {
            "map_ssim": metrics.ssim(self.map_adv, self.target_map),
            "map_pcc": metrics.pcc(self.map_adv, self.target_map),
            "map_mse": metrics.mse(self.map_adv, self.target_map),
            "map_pcc_original": metrics.pcc(self.map_adv, self.map_x),
            "image_mse": metrics.mse(self.x_adv, self.x),
            "image_ssim": metrics.ssim(self.x_adv, self.x, data_range=_data_range(self.config.bounds)),
            "linf": (self.x_adv - self.x).flatten(1).abs().max(1).values,
            "logit_change": change["logits"],
            "softmax_change": change["softmax"],
            "class_prob_change": (p_adv.gather(1, k) - p_x.gather(1, k))[:, 0],
            "class_kept": metrics.class_kept(self.out_adv, self.out_x).to(self.x.dtype),
        }

    def table(self, offset: int = 0) -> list[dict]:
        """The metrics as tidy rows, one per example (``offset`` numbers them in a larger run)."""
        cols = {k: v.detach().cpu().tolist() for k, v in self.metrics().items()}
        return [{"example": offset + i, "method": self.config.method, "target_class": int(t),
                 **{k: v[i] for k, v in cols.items()}} for i, t in enumerate(self.target.tolist())]

    def config_dict(self) -> dict:
        return asdict(self.config)


def _data_range(bounds) -> float:
    lo, hi = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)
    return float((hi - lo).max())


def manipulate(model: nn.Module, x: torch.Tensor, target_map: torch.Tensor, method: str, *, target=None,
               steps: int | None = None, lr: float | None = None, weights: tuple[float, float] | None = None,
               beta_growth: tuple[float, float] | None | str = "preset", smooth_beta: float | None = None,
               smoothgrad: int | None = None, noise_level: float = 0.2, output: str | None = None,
               bounds=(0.0, 1.0), linf: float | None = None, l2: float | None = None,
               record_every: int = 0, generator: torch.Generator | None = None, progress: bool = False,
               preset: Preset | None = None, **method_options) -> AttackResult:
    """Manipulate ``x`` [B, ...] so that the map of ``method`` matches ``target_map`` [B, H, W].

    Options left out (steps, lr, weights, beta_growth, output) take ``preset``, a supplement row
    such as ``attack.preset('gradient', table=2, arch='resnet')``; by default the method's row of
    Table 1 (Table 4 with ``smoothgrad``; Table 5 with ``smooth_beta``, whose paper value is 0.8).
    ``weights`` = (w_expl, w_out) default to the row's factors rescaled to the map size and output
    count (see presets); ``lr`` to its printed rate. ``beta_growth`` (beta0, beta_e) or None for the
    plain ReLU model; ``output`` 'softmax' (reference code) or 'logits' (supplement C).
    ``record_every=k`` keeps x_adv every k steps in ``result.path``.
    """
    cfg = _config(model, x, target_map, method, steps, lr, weights, beta_growth, smooth_beta, smoothgrad,
                  noise_level, output, bounds, linf, l2, record_every, method_options, preset)
    target = resolve_target(model, x, target)  # validated once here; steps use the unchecked paths
    target_map = target_map.detach().to(x)  # a constant of the loss: its graph is never backpropagated
    target_map = target_map / target_map.flatten(1).sum(1).view(-1, 1, 1)
    lo, hi = channel_bounds(x, *bounds)
    betas = beta_schedule(*cfg.beta_growth, cfg.steps) if cfg.beta_growth else [None] * cfg.steps
    objective = Objective(model, x, target, target_map, cfg, lo, hi, generator)

    x_adv = x.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([x_adv], lr=cfg.lr)
    losses = {"explanation": [], "output": [], "total": []}
    path, path_steps = ([x.detach().clone()], [0]) if record_every else ([], [])
    for step in _steps(cfg.steps, progress, method):
        expl_err, out_err, loss = objective(x_adv, betas[step])
        (x_adv.grad,) = torch.autograd.grad(loss.sum(), x_adv)  # x_adv only: no parameter gradients
        opt.step()
        with torch.no_grad():
            _project(x_adv, x, lo, hi, cfg.linf, cfg.l2)
        for name, value in (("explanation", expl_err), ("output", out_err), ("total", loss)):
            losses[name].append(value.detach())
        if record_every and ((step + 1) % record_every == 0 or step + 1 == cfg.steps):
            path.append(x_adv.detach().clone())
            path_steps.append(step + 1)

    x_adv = x_adv.detach()
    final = dict(beta=cfg.smooth_beta, smoothgrad=cfg.smoothgrad, noise_level=cfg.noise_level,
                 bounds=cfg.bounds, generator=generator, **cfg.method_options)
    with torch.no_grad():
        out_x, out_adv = model(x), model(x_adv)
    return AttackResult(
        x=x.detach(), x_adv=x_adv, target_map=target_map,
        map_x=relevance_map(explain(model, x.detach(), method, target, **final)),
        map_adv=relevance_map(explain(model, x_adv, method, target, **final)),
        out_x=out_x, out_adv=out_adv, target=target,
        losses={k: torch.stack(v) for k, v in losses.items()},
        path=torch.stack(path) if record_every else None, path_steps=path_steps, config=cfg)


def _config(model, x, target_map, method, steps, lr, weights, beta_growth, smooth_beta, smoothgrad,
            noise_level, output, bounds, linf, l2, record_every, method_options, row) -> AttackConfig:
    """Validate every input before any work, and fill in the presets."""
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; available: {sorted(METHODS)}")
    check_tensor(x, "x", min_dim=2)
    lo, hi = channel_bounds(x, *bounds)
    if not bool((lo < hi).all()):
        raise ValueError(f"bounds need lower < upper, got {bounds!r}")
    check_in_range(x, *bounds, name="x")
    check_tensor(target_map, "target_map", min_dim=2)
    check_eval(model, "manipulate")
    if row is not None and not isinstance(row, Preset):
        raise TypeError(f"preset must be a geomexpl.attack.Preset (attack.preset(...)), got {type(row).__name__}")
    row = row or table_row(method, smoothgrad=bool(smoothgrad), smooth_beta=smooth_beta is not None)
    output = output or row.output
    growth = row.beta_growth if beta_growth == "preset" else beta_growth
    with torch.no_grad():  # with beta growth, the twin's first forward names a network it cannot smooth
        num_outputs = (softplus_twin(model, growth[0]) if growth else model)(x[:1].detach()).shape[1]
    map_shape = (x.shape[0],) + (tuple(x.shape[2:]) if x.dim() == 4 else tuple(x.shape[1:]))
    if tuple(target_map.shape) != map_shape:
        raise ValueError(f"target_map must have shape {map_shape} (one map per example of x), "
                         f"got {tuple(target_map.shape)}")
    if (target_map < 0).any():
        raise ValueError("target_map must be non-negative: maps are sums of |h| over channels")
    empty = (target_map.flatten(1).sum(1) <= 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"target_map is all zero for examples {empty}; a target map needs some relevance")
    if output not in ("softmax", "logits"):
        raise ValueError(f"output must be 'softmax' or 'logits', got {output!r}")
    if smooth_beta is not None and smoothgrad:
        raise ValueError("attack either a beta-smoothed (smooth_beta) or a SmoothGrad explanation, not both")
    for name, value in (("steps", steps), ("lr", lr), ("linf", linf), ("l2", l2), ("smooth_beta", smooth_beta)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    w_expl, w_out = weights or row.weights(math.prod(map_shape[1:]), num_outputs)
    return AttackConfig(method=method, steps=steps or row.steps, lr=lr or row.lr, w_expl=w_expl, w_out=w_out,
                        beta_growth=tuple(growth) if growth else None, output=output, smooth_beta=smooth_beta,
                        smoothgrad=smoothgrad, noise_level=noise_level, linf=linf, l2=l2,
                        record_every=record_every, bounds=tuple(bounds), method_options=dict(method_options))


class Objective:
    """The per-example loss L_b(x_adv) of eq. 4 at a surrogate beta, everything fixed prepared once:
    batch norm folded, method options on the device, the reference output when beta is fixed."""

    def __init__(self, model, x, target, target_map, cfg: AttackConfig, lo, hi, generator):
        self.net = fold_batchnorm(model)
        self.x, self.target, self.target_map, self.cfg, self.generator = x, target, target_map, cfg, generator
        self.bounds = (lo, hi)
        self.options = on_device(cfg.method_options, x)
        self.smoothed = softplus_twin(self.net, cfg.smooth_beta) if cfg.smooth_beta is not None else None
        self.fixed_ref = None
        if cfg.beta_growth is None:  # the surrogate does not change: its reference output neither
            with torch.no_grad():
                self.fixed_ref = _output(self.net(x), cfg.output)

    def __call__(self, x_adv: torch.Tensor, beta: float | None):
        """(explanation error, output error, loss), each [B], differentiable in x_adv."""
        cfg = self.cfg
        # no beta: the model as given (a twin stays a twin; softplus_twin(twin, None) would be its ReLU base)
        surrogate = self.net if beta is None else softplus_twin(self.net, beta)
        ref_out = self.fixed_ref
        if ref_out is None:
            with torch.no_grad():
                ref_out = _output(surrogate(self.x), cfg.output)
        with capture_logits(x_adv) as shared:  # the methods hand over the logits of their own forward
            net = surrogate if self.smoothed is None else self.smoothed
            h = explain_trusted(net, x_adv, cfg.method, self.target,
                                smoothgrad=cfg.smoothgrad, noise_level=cfg.noise_level, bounds=self.bounds,
                                generator=self.generator, **self.options)
        logits = shared.get("logits") if self.smoothed is None else None
        logits = surrogate(x_adv) if logits is None else logits
        expl_err = (relevance_map_trusted(h) - self.target_map).pow(2).flatten(1).mean(1)
        out_err = (_output(logits, cfg.output) - ref_out).pow(2).mean(1)
        return expl_err, out_err, cfg.w_expl * expl_err + cfg.w_out * out_err


def _output(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return logits.softmax(1) if kind == "softmax" else logits


def _project(x_adv, x, lo, hi, linf, l2) -> None:
    """In place: onto the L-inf / L2 ball around x (per example), then into the valid range."""
    if linf is not None:
        x_adv.copy_(x + (x_adv - x).clamp(-linf, linf))
    if l2 is not None:
        delta = x_adv - x
        norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        x_adv.copy_(x + delta * (l2 / norm).clamp(max=1.0))
    x_adv.copy_(torch.maximum(torch.minimum(x_adv, hi), lo))


def _steps(n: int, progress: bool, method: str):
    if not progress:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=f"attack {method}", unit="step", leave=False)
