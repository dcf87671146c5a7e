"""Attack hyperparameters of the supplement's five tables, mapped to the zoo's small inputs.

Table 1 (plain methods), Table 4 (SmoothGrad) and Table 5 (beta-smoothing) give iterations, Adam's
learning rate and the factors of the two mean squared errors, (1e11, 1e6), for 224x224 ImageNet
maps and 1000 softmax outputs. Table 2 (supplement C.1) has one row per architecture for the
gradient, with the factors (1e11, 10) on the pre-activations (logits) and beta growth 30 -> 300 for
DenseNet. Table 3 (supplement C.2) is LRP on CIFAR-10: 32x32 maps, 10 outputs, factors (1e7, 1e2).

A map sums to one, so each entry scales like 1/N and its MSE like 1/N^2; an MSE over K outputs
scales like 1/K. A row's factors are therefore rescaled from the map size and output count they were
set for (its ``reference``) so that both loss terms keep the magnitude they had there:

    w_expl(N) = f_expl * (N / N_ref)^2,      w_out(K) = f_out * K / K_ref.

Adam is invariant to a common scale of the loss, so only the ratio w_out / w_expl and the learning
rate shape the optimisation. Beta grows from 10 to 100 (supplement A.1) except for LRP, whose rules
do not use the second derivative of relu, and for beta-smoothing, attacked at fixed beta = 0.8
(supplement D).

**Learning-rate convention.** The tables' rates are in the reference code's units: Adam steps on
ImageNet-normalised pixels (x - mean) / std, std = (0.229, 0.224, 0.225). Adam moves each
coordinate by about ``lr`` per step, so on [0, 1] pixels the same step is ``lr * 0.226``
(:data:`PIXEL_STD`, the mean std): :meth:`Preset.rate` ('unit') converts, 'table' keeps the printed
value. ``manipulate`` takes a row's printed rate unless ``lr`` is given; the studies of
``experiments/`` state which convention they use.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

REFERENCE = (224 * 224, 1000)  # map pixels and outputs of ImageNet, for which Tables 1, 2, 4, 5 were set
REFERENCE_FACTORS = (1e11, 1e6)
PIXEL_STD = 0.226  # ImageNet normalisation std (0.229, 0.224, 0.225), mean over channels
RATE_CONVENTIONS = {"table": 1.0, "unit": PIXEL_STD}
ARCH_BETA_GROWTH = {"densenet": (30.0, 300.0)}  # supplement C.1: DenseNet needs a larger beta


@dataclass(frozen=True)
class Preset:
    """One row of a supplement table."""

    steps: int
    lr: float
    beta_growth: tuple[float, float] | None = (10.0, 100.0)
    factors: tuple[float, float] = REFERENCE_FACTORS
    reference: tuple[int, int] = REFERENCE  # (map pixels, outputs) the factors were set for
    output: str = "softmax"  # the output term's quantity: 'softmax' or 'logits'

    def with_(self, **changes) -> "Preset":
        return replace(self, **changes)

    def rate(self, convention: str = "table") -> float:
        """The learning rate in 'table' units (as printed) or 'unit' ([0, 1] pixels: x PIXEL_STD)."""
        if convention not in RATE_CONVENTIONS:
            raise ValueError(f"rate convention must be one of {sorted(RATE_CONVENTIONS)}, got {convention!r}")
        return self.lr * RATE_CONVENTIONS[convention]

    def weights(self, map_pixels: int, num_outputs: int) -> tuple[float, float]:
        """(w_expl, w_out): this row's factors rescaled to N map pixels and K outputs."""
        return loss_weights(map_pixels, num_outputs, self.factors, self.reference)


TABLE1 = {  # plain methods
    "gradient": Preset(1500, 1e-3),
    "grad_x_input": Preset(1500, 1e-3),
    "integrated_gradients": Preset(500, 5e-3),
    "lrp": Preset(1500, 2e-4, beta_growth=None),
    "guided_backprop": Preset(1500, 1e-3),
    "pattern_attribution": Preset(1500, 2e-3),
}
TABLE2 = {  # the gradient on other architectures, keyed by zoo architecture
    "vgg": Preset(1500, 1e-3, factors=(1e11, 10.0), output="logits"),
    "alexnet": Preset(4000, 1e-3, factors=(1e11, 10.0), output="logits"),
    "densenet": Preset(2000, 5e-4, ARCH_BETA_GROWTH["densenet"], factors=(1e11, 10.0), output="logits"),
    "resnet": Preset(2000, 1e-3, factors=(1e11, 10.0), output="logits"),
}
TABLE3 = {  # a second data set: CIFAR-10's 32x32 maps and 10 outputs
    "lrp": Preset(1500, 2e-4, beta_growth=None, factors=(1e7, 1e2), reference=(32 * 32, 10)),
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
TABLES = {1: TABLE1, 2: TABLE2, 3: TABLE3, 4: TABLE4, 5: TABLE5}
SMOOTHING_BETA = 0.8
FALLBACK = Preset(1500, 1e-3)


def preset(method: str, *, smoothgrad: bool = False, smooth_beta: bool = False, table: int | None = None,
           arch: str | None = None) -> Preset:
    """The table row for ``method``: Table 4 for SmoothGrad, Table 5 for beta-smoothing, else Table 1.

    ``table=2`` (the gradient, one row per ``arch``) and ``table=3`` (LRP on a 32x32, 10-class data
    set) are asked for by number; a method or architecture those tables lack is an error. Methods
    missing from Tables 1, 4 and 5 take Table 1's row, else 1500 steps at lr 1e-3 with beta growth.
    """
    if table is None:
        table = 4 if smoothgrad else 5 if smooth_beta else 1
    if table not in TABLES:
        raise ValueError(f"the supplement has Tables {sorted(TABLES)}, not {table!r}")
    if table == 2:
        if method != "gradient" or arch not in TABLE2:
            raise ValueError(f"Table 2 has the gradient on {sorted(TABLE2)}; got method {method!r}, arch {arch!r}")
        return TABLE2[arch]
    if table == 3:
        if method not in TABLE3:
            raise ValueError(f"Table 3 has only {sorted(TABLE3)}; got method {method!r}")
        return TABLE3[method]
    return TABLES[table].get(method) or TABLE1.get(method) or FALLBACK


def loss_weights(map_pixels: int, num_outputs: int, factors: tuple[float, float] = REFERENCE_FACTORS,
                 reference: tuple[int, int] = REFERENCE) -> tuple[float, float]:
    """(w_expl, w_out): ``factors`` set for ``reference`` = (pixels, outputs), rescaled to N map pixels
    and K outputs (Tables 1, 2, 4, 5: ImageNet's 224^2 maps and 1000 outputs)."""
    w_expl = factors[0] * (map_pixels / reference[0]) ** 2
    w_out = factors[1] * num_outputs / reference[1]
    return w_expl, w_out
