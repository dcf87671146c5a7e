"""Every explanation method on every torchvision-like architecture behind an ImageNet normalisation,
with random weights, at 64x64 (batch 1, float32), and at 224x224 for VGG-16 and ResNet-50 (gradient,
LRP, IG with 4 steps, the top curvature with at most 30 HVPs and 2 attack steps).

PatternNet/PatternAttribution need patterns fitted per layer in float64, as large as the weights
(six 0.8 GB statistics for VGG-16's first dense layer, so VGG-16's pattern methods are not run
here): on AlexNet, ResNet-50 and DenseNet-121 they run under the ``heavy`` marker with the 224x224 tests (``.ci/run`` runs them after the default suite). On the
random-weight ResNet-50 and DenseNet-121 PatternNet's signal overflows float32 to NaN (patterns of
size ~100 multiplied over 50 or more layers; also without the normalisation), recorded as strict
expected failures."""
import functools

import pytest
import torch

from geomexpl import attack, explain, nets
from geomexpl.geometry import logit, principal_curvatures

ARCHS = ("vgg16", "resnet18", "resnet50", "densenet121", "alexnet")
PATTERN_METHODS = ("pattern_net", "pattern_attribution")
HEAVY_PATTERNS = ("alexnet", "resnet50", "densenet121")
UNTESTED_PATTERNS = ("vgg16",)  # fit_patterns keeps ~5 GB of float64 statistics for its 25088x4096 layer
OVERFLOWS = ("resnet50", "densenet121")


@functools.lru_cache(maxsize=None)
def wrapped(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return nets.with_normalization(nets.torchvision_like(name, num_classes=10)).requires_grad_(False)


def options(method: str, model, size: int) -> dict:
    if method in PATTERN_METHODS:
        return {"patterns": explain.fit_patterns(model, torch.rand(2, 3, size, size, generator=torch.Generator()
                                                                       .manual_seed(1)))}
    return {"steps": 4} if method == "integrated_gradients" else {}


def check_methods(name: str, methods) -> None:
    model = wrapped(name)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits = model(x)
    target = int(logits.argmax(1))
    patterns = options("pattern_net", model, 64) if set(methods) & set(PATTERN_METHODS) else {}
    for method in methods:
        opts = patterns if method in PATTERN_METHODS else options(method, model, 64)
        h = explain.explain(model, x, method, **opts)
        assert h.shape == x.shape and h.dtype == x.dtype, method
        assert torch.isfinite(h).all() and h.abs().sum() > 0, method
        if method == "lrp":  # R^L = f_k(x) reaches the [0, 1] pixels through the normalisation
            torch.testing.assert_close(h.sum(), logits[0, target], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ARCHS)
def test_every_method_on_a_normalised_torchvision_architecture_at_64(name):
    check_methods(name, [m for m in sorted(explain.METHODS)
                         if m not in PATTERN_METHODS or name not in HEAVY_PATTERNS + UNTESTED_PATTERNS])


@pytest.mark.heavy
@pytest.mark.parametrize("name", HEAVY_PATTERNS)
def test_pattern_methods_on_the_large_architectures_at_64(name):
    if name in OVERFLOWS:
        with pytest.raises(AssertionError, match="pattern_net"):
            check_methods(name, PATTERN_METHODS)
        pytest.xfail(f"PatternNet's signal overflows float32 on random-weight {name} (module docstring)")
    check_methods(name, PATTERN_METHODS)


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_full_size_224_smoke(name):
    model = wrapped(name)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for method, opts in (("gradient", {}), ("lrp", {}), ("integrated_gradients", {"steps": 4})):
        h = explain.explain(model, x, method, **opts)
        assert h.shape == x.shape and torch.isfinite(h).all() and h.abs().sum() > 0, method
    kappa, info = principal_curvatures(logit(nets.softplus_twin(model, 10.0)), x, k=1, method="torch", maxiter=30)
    assert torch.isfinite(kappa).all() and int(info.n_hvp.max()) <= 31
    target = attack.explanation_target(model, x.flip(-1), "lrp")
    result = attack.manipulate(model, x, target, "lrp", steps=2)
    assert result.x_adv.shape == x.shape and torch.isfinite(result.metrics()["map_pcc"]).all()
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
