"""Sanity checks of Sixt et al. (2020): parameter randomisation, random logit and the CSC."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from geomexpl import sanity
from geomexpl.explain import explain
from geomexpl.sanity.randomisation import randomisation_units, reinitialise, signed_map


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Sequential:
    """A 16x16 CNN with a batch norm, in eval mode with frozen weights, like a zoo model."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 16), nn.ReLU(),
        nn.Linear(16, classes))
    with torch.no_grad():  # non-trivial running statistics, as after training
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval().requires_grad_(False)


def rank_one_head(seed: int = 0) -> nn.Sequential:
    """Every logit is w_k s(x) + b_k of one scalar s(x): the classes differ only in scale and sign."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 1, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 4)).eval().requires_grad_(False)


def images(batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def snapshot(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict, flags: tuple) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} was modified"
    assert (model.training, [p.requires_grad for p in model.parameters()]) == flags


# ---- parameter randomisation ---------------------------------------------------------------------

def test_units_group_batch_norm_with_its_convolution():
    names = [(name, [type(m).__name__ for m in modules]) for name, modules in randomisation_units(small_cnn())]
    assert names == [("0", ["Conv2d", "BatchNorm2d"]), ("4", ["Conv2d"]), ("7", ["Linear"]), ("9", ["Linear"])]


@pytest.mark.parametrize("order", sanity.ORDERS)
def test_randomisation_never_changes_the_users_model(order):
    model, x = small_cnn(), images()
    before, flags = snapshot(model), (model.training, [p.requires_grad for p in model.parameters()])
    reference = model(x)
    result = sanity.parameter_randomisation(model, x, "gradient", order=order,
                                            generator=torch.Generator().manual_seed(0))
    assert_unchanged(model, before, flags)
    assert torch.equal(model(x), reference)
    assert result.layers == ["9", "7", "4", "0"]  # top layer first
    assert result.ssim.shape == result.spearman.shape == (4, 3)
    assert result.maps.shape == (5, 3, 16, 16)


def test_cascading_randomisation_destroys_the_gradient_map():
    result = sanity.parameter_randomisation(small_cnn(), images(), "gradient",
                                            generator=torch.Generator().manual_seed(0))
    assert ((result.ssim >= -1) & (result.ssim <= 1)).all()
    assert ((result.spearman >= -1) & (result.spearman <= 1)).all()
    # with every layer random, the map has nothing in common with the original one
    assert result.ssim[-1].max() < 0.8
    assert result.ssim[-1].median() < result.ssim[0].median()


def test_independent_randomisation_restores_each_layer():
    """Layer k randomised alone gives the same map as cascading up to k when k is the top layer,
    and each independent step starts from the original weights again (so results do not depend on
    the order of the steps before)."""
    model, x = small_cnn(), images()
    cascading, independent = (sanity.parameter_randomisation(model, x, "gradient", order,
                                                             generator=torch.Generator().manual_seed(4))
                              for order in ("cascading", "independent"))
    torch.testing.assert_close(independent.maps[1], cascading.maps[1])  # same draw for the top layer
    # a later independent step differs from the cascading one (which also has the top layers random)
    assert not torch.allclose(independent.maps[-1], cascading.maps[-1])
    # ... and equals randomising that layer alone on a fresh copy with the same draws
    gen = torch.Generator().manual_seed(4)
    torch.randint(2 ** 62, (1,), generator=gen)  # the noise seed drawn first
    work = small_cnn()
    units = randomisation_units(work)
    for _, modules in units[:0:-1]:  # draws of the steps before, discarded
        reinitialise([copy.deepcopy(m) for m in modules], gen)
    reinitialise(units[0][1], gen)
    expected = signed_map(explain(work, x, "gradient", model(x).argmax(1)))
    torch.testing.assert_close(independent.maps[-1], expected)


def test_rank_one_head_randomisation_only_rescales_the_map_even_with_smoothgrad():
    """Randomising the last layer of rank_one_head multiplies the gradient by w_k'/w_k: the signed map
    may flip sign, and max(SSIM(a, b), SSIM(a, -b)) must still be 1. With SmoothGrad the original and
    the randomised maps must see the same noise for this to hold."""
    model, x = rank_one_head(), images(4)
    for options in ({}, {"smoothgrad": 3}):
        result = sanity.parameter_randomisation(model, x, "gradient", generator=torch.Generator().manual_seed(2),
                                                **options)
        torch.testing.assert_close(result.ssim[0], torch.ones(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.spearman[0], torch.ones(4), atol=1e-5, rtol=0)
        assert result.ssim[-1].min() < 0.99  # the convolutions do matter


def test_randomisation_is_reproducible_with_a_generator():
    model, x = small_cnn(), images()
    a, b = (sanity.parameter_randomisation(model, x, "gradient", generator=torch.Generator().manual_seed(9))
            for _ in range(2))
    assert torch.equal(a.ssim, b.ssim)
    rows = a.rows()
    assert len(rows) == 12 and {r["layer"] for r in rows} == {"9", "7", "4", "0"}


# ---- random logit ----------------------------------------------------------------------------------

def test_random_logit_differs_between_classes_for_the_gradient():
    model, x = small_cnn(classes=10), images(6)
    result = sanity.random_logit(model, x, "gradient", generator=torch.Generator().manual_seed(0))
    assert ((result.ssim >= -1) & (result.ssim <= 1)).all()
    assert ((result.spearman >= -1) & (result.spearman <= 1)).all()
    assert (result.other != result.target).all() and ((result.other >= 0) & (result.other < 10)).all()
    assert torch.equal(result.target, model(x).argmax(1))
    assert result.ssim.max() < 0.99


def test_random_logit_is_one_for_a_class_insensitive_model():
    result = sanity.random_logit(rank_one_head(), images(4), "gradient", target=0,
                                 generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.ssim, torch.ones(4), atol=1e-5, rtol=0)
    assert (result.target == 0).all() and (result.other != 0).all()


# ---- errors ------------------------------------------------------------------------------------------

def test_unknown_method_or_order_is_a_clear_error():
    model, x = small_cnn(), images(1)
    with pytest.raises(ValueError, match="unknown explanation method 'nope'"):
        sanity.parameter_randomisation(model, x, "nope")
    with pytest.raises(ValueError, match="unknown explanation method 'nope'"):
        sanity.random_logit(model, x, "nope")
    with pytest.raises(ValueError, match="order must be one of"):
        sanity.parameter_randomisation(model, x, "gradient", order="backwards")
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        sanity.random_logit(model, x.flatten(1), "gradient")


# ---- cosine similarity convergence ----------------------------------------------------------------

def linear_relu_stack(depth: int = 8, width: int = 48, seed: int = 0) -> nn.Sequential:
    """Bias-free Linear + ReLU layers (Sixt et al. eq. 1), He-initialised so activations stay alive."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        linear = nn.Linear(width, width, bias=False)
        nn.init.kaiming_normal_(linear.weight)
        layers += [linear, nn.ReLU()]
    layers.append(nn.Linear(width, 10, bias=False))
    return nn.Sequential(*layers).eval().requires_grad_(False)


def dense_medians(result) -> list[float]:
    """Median |cos| at the linear layers below the injection, top to bottom."""
    return [e.median for e in result.layers[1:] if e.kind == "linear"]


def test_z_plus_chain_converges_with_depth_and_the_gradient_does_not():
    model = linear_relu_stack()
    x = torch.rand(6, 48, generator=torch.Generator().manual_seed(0))
    csc = {method: sanity.cosine_similarity_convergence(model, x, method, n_vectors=6,
                                                        generator=torch.Generator().manual_seed(1), **options)
           for method, options in (("lrp_alpha_beta", {"preset": "a1b0"}), ("gradient", {}))}
    z_plus, gradient = dense_medians(csc["lrp_alpha_beta"]), dense_medians(csc["gradient"])
    assert len(z_plus) == 8 and z_plus[-1] > 1 - 1e-6  # aligned to float32 precision at the bottom
    assert z_plus[3] > 0.99  # within a few layers of the injection
    gaps = [1 - m for m in z_plus]
    assert all(b <= a * 1.01 + 1e-7 for a, b in zip(gaps, gaps[1:]))  # 1 - |cos| shrinks layer by layer
    # The gradient's vectors stay unaligned at every depth (above the 48-d baseline only because the
    # injected logit vectors span just 10 dimensions and the ReLU masks drop about half the units).
    assert max(gradient) < 0.5 and gradient[-1] < gradient[0] + 0.3
    assert csc["gradient"].layers[1].baseline_median == pytest.approx(sanity.random_baseline_median(48))


def test_non_negative_weights_make_even_the_gradient_converge():
    """Theorem 1 is about the matrix chain: with W >= 0 and x >= 0 every ReLU is active and the
    gradient's chain W^T M is non-negative too, so it aligns as the z+ rule does."""
    model = linear_relu_stack()
    for module in model:
        if isinstance(module, nn.Linear):
            module.weight.abs_()
    x = torch.rand(4, 48, generator=torch.Generator().manual_seed(0))
    result = sanity.cosine_similarity_convergence(model, x, "gradient", generator=torch.Generator().manual_seed(1))
    assert dense_medians(result)[-1] > 1 - 1e-5


def test_the_gradient_csc_propagates_plain_vector_jacobian_products():
    """The engine's 'gradient' records at a layer are J^T v: compare with autograd."""
    model, x = small_cnn(), images(2)
    gen = torch.Generator().manual_seed(3)
    result = sanity.cosine_similarity_convergence(model, x, "gradient", n_vectors=3, generator=gen)
    v = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))  # the injected logit vectors
    xs = x.repeat(3, 1, 1, 1).requires_grad_(True)
    hidden = model[:5](xs)  # output of the second convolution (before its ReLU)
    (vjp,) = torch.autograd.grad(model[5:](hidden), hidden, v)
    (input_vjp,) = torch.autograd.grad(model(xs), xs, v)
    names = [e.layer for e in result.layers]
    conv = next(e for e in result.layers if e.kind == "linear" and e.shape == (8, 8, 8))
    expected = sanity.convergence.layer_convergence(conv.layer, 0, "linear", vjp.view(3, 2, 8, 8, 8))
    np.testing.assert_allclose(conv.gaps, expected.gaps, atol=1e-6)
    expected_input = sanity.convergence.layer_convergence("x", 0, "input", input_vjp.view(3, 2, 1, 16, 16))
    np.testing.assert_allclose(result.layers[-1].global_gaps, expected_input.global_gaps, atol=1e-6)
    assert names[0] == result.start and result.layers[-1].kind == "input"


def test_injection_layer_holds_random_vectors_and_summaries_are_consistent():
    model = linear_relu_stack(depth=2, width=64)
    x = torch.rand(40, 64, generator=torch.Generator().manual_seed(0))
    names = sanity.convergence.layer_names(model)
    result = sanity.cosine_similarity_convergence(model, x, "gradient", layer=names[3], n_vectors=5,
                                                  generator=torch.Generator().manual_seed(0))
    top = result.layers[0]
    assert top.layer == names[3] and top.depth == 0 and top.dim == 64 and top.gaps.size == 40 * 10
    assert top.median == pytest.approx(top.baseline_median, abs=0.03)  # N(0, I) vectors as injected
    p = top.percentiles()
    assert 0 <= p[10] <= p[25] <= top.median <= p[75] <= p[90] <= 1
    counts, edges = top.histogram(bins=10)
    assert counts.sum() == top.gaps.size and edges[0] == 0 and edges[-1] == 1
    assert [e.layer for e in result.layers] == names[3::-1]  # from the injection down to the input
    assert {row["layer"] for row in result.rows()} == set(names[:4])


def test_smoothgrad_without_noise_and_a_huge_beta_reproduce_the_gradient():
    model = linear_relu_stack(depth=3)
    x = torch.rand(3, 48, generator=torch.Generator().manual_seed(0))

    def csc(**options):
        return sanity.cosine_similarity_convergence(model, x, "gradient", generator=torch.Generator().manual_seed(5),
                                                    **options)
    plain = csc()
    for other, atol in ((csc(smoothgrad=2, noise_level=0.0), 1e-6), (csc(beta=1e4), 1e-3)):
        for a, b in zip(plain.layers, other.layers):
            np.testing.assert_allclose(a.gaps, b.gaps, atol=atol)
    noisy = csc(smoothgrad=4, noise_level=0.3)
    assert not np.allclose(noisy.layers[-1].gaps, plain.layers[-1].gaps, atol=1e-3)


def test_unknown_layer_or_method_is_a_clear_error():
    model, x = linear_relu_stack(depth=2), torch.rand(2, 48)
    with pytest.raises(ValueError, match=r"unknown layer 'fc9'; layer must be one of layer_names\(model\)"):
        sanity.cosine_similarity_convergence(model, x, "gradient", layer="fc9")
    with pytest.raises(ValueError, match="unknown propagation method 'nope' for the CSC; available:.*'gradient'"):
        sanity.cosine_similarity_convergence(model, x, "nope")
    with pytest.raises(ValueError, match="n_vectors must be at least 2"):
        sanity.cosine_similarity_convergence(model, x, "gradient", n_vectors=1)


# ---- command line ------------------------------------------------------------------------------------

def test_cli_writes_tidy_tables_config_and_figures_and_resumes(tmp_path, monkeypatch):
    import csv
    import json

    from geomexpl import cli
    from geomexpl.commands import sanity as command

    argv = ["sanity", "--arch", "mlp", "--n", "2", "--vectors", "3", "--out", str(tmp_path), "--methods"]
    assert cli.main(argv + ["gradient", "lrp_alpha_beta:preset=a1b0"]) == 0
    tables = {key: list(csv.DictReader((tmp_path / name).open())) for key, name in command.TABLES.items()}
    assert {r["method"] for r in tables["csc"]} == {"gradient", "lrp_alpha_beta:preset=a1b0"}
    assert len(tables["random_logit"]) == 4 and len(tables["randomisation"]) == 2 * 2 * 4  # 4 dense layers
    z_plus = [float(r["median_cos"]) for r in tables["csc"]
              if r["method"].startswith("lrp") and r["kind"] == "linear"]
    assert z_plus[-1] > z_plus[1]  # the mlp's relevance vectors align towards the input
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 0 and "torch" in config["versions"] and config["device"].startswith("cpu")
    for figure in ("csc.png", "randomisation.png", "randomisation_maps.png", "random_logit.png"):
        assert (tmp_path / figure).stat().st_size > 5000
    # a rerun with one more method computes only that one
    checked = []
    real = command._check
    monkeypatch.setattr(command, "_check",
                        lambda model, x, y, name, *rest: checked.append(name) or real(model, x, y, name, *rest))
    assert cli.main(argv + ["gradient", "lrp_alpha_beta:preset=a1b0", "guided_backprop"]) == 0
    assert checked == ["guided_backprop"]
    assert len(list(csv.DictReader((tmp_path / "random_logit.csv").open()))) == 6
    assert cli.main(argv + ["gradient:nope"]) == 2  # malformed option: a clear error, no traceback
    assert cli.main(argv + ["no_such_method"]) == 2
