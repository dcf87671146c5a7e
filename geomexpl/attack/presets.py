"""Attack hyperparameters of the supplement's tables, mapped to the zoo's small inputs.

Table 1 (plain methods), Table 4 (SmoothGrad) and Table 5 (beta-smoothing) give iterations, Adam's
learning rate and the factors of the two mean squared errors, (1e11, 1e6), for 224x224 ImageNet
maps and 1000 softmax outputs. A map sums to one, so each entry scales like 1/N and its MSE like
1/N^2; an MSE over K outputs scales like 1/K. The factors are therefore rescaled so that both loss
terms keep the magnitude they had in the reference:

    w_expl(N) = 1e11 * (N / 224^2)^2,      w_out(K) = 1e6 * K / 1000.

Adam is invariant to a common scale of the loss, so only the ratio w_out / w_expl and the learning
rate shape the optimisation. Beta grows from 10 to 100 (supplement A.1) except for LRP, whose rules
do not use the second derivative of relu, and for beta-smoothing, attacked at fixed beta = 0.8
(supplement D). The learning rates are the tables'; the reference images span about 4.5 units
(ImageNet normalisation), ours 1, so the same rate moves a zoo pixel relatively further.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

REFERENCE_PIXELS = 224 * 224
REFERENCE_CLASSES = 1000
REFERENCE_FACTORS = (1e11, 1e6)


@dataclass(frozen=True)
class Preset:
    """One row of a supplement table."""

    steps: int
    lr: float
    beta_growth: tuple[float, float] | None = (10.0, 100.0)

    def with_(self, **changes) -> "Preset":
        return replace(self, **changes)


TABLE1 = {  # plain methods
    "gradient": Preset(1500, 1e-3),
    "grad_x_input": Preset(1500, 1e-3),
    "integrated_gradients": Preset(500, 5e-3),
    "lrp": Preset(1500, 2e-4, beta_growth=None),
    "guided_backprop": Preset(1500, 1e-3),
    "pattern_attribution": Preset(1500, 2e-3),
}
TABLE4 = {  # SmoothGrad
    "gradient": Preset(1500, 3e-3),
    "lrp": Preset(1500, 3e-4),
}
TABLE5 = {  # beta-smoothing at beta = 0.8, no growth
    "gradient": Preset(500, 2.5e-4, None),
    "grad_x_input": Preset(500, 2.5e-4, None),
    "integrated_gradients": Preset(200, 2.5e-3, None),
    "lrp": Preset(1500, 2e-4, None),
    "guided_backprop": Preset(500, 5e-4, None),
    "pattern_attribution": Preset(500, 5e-4, None),
}
SMOOTHING_BETA = 0.8
FALLBACK = Preset(1500, 1e-3)


def preset(method: str, *, smoothgrad: bool = False, smooth_beta: bool = False) -> Preset:
    """The table row for ``method``: Table 4 for SmoothGrad, Table 5 for beta-smoothing, else Table 1.

    Methods missing from a table take Table 1's row, else 1500 steps at lr 1e-3 with beta growth.
    """
    table = TABLE4 if smoothgrad else TABLE5 if smooth_beta else TABLE1
    return table.get(method) or TABLE1.get(method) or FALLBACK


def loss_weights(map_pixels: int, num_outputs: int) -> tuple[float, float]:
    """(w_expl, w_out): the reference factors (1e11, 1e6) rescaled to N map pixels and K outputs."""
    w_expl = REFERENCE_FACTORS[0] * (map_pixels / REFERENCE_PIXELS) ** 2
    w_out = REFERENCE_FACTORS[1] * num_outputs / REFERENCE_CLASSES
    return w_expl, w_out
