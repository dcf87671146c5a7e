"""The 224x224 curvature-vs-beta study's pieces on small inputs: rows from the torch Lanczos match the
dense oracle, the CSV round trip resumes, and the section reports the fitted slope."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from geomexpl.geometry import logit, principal_curvatures
from geomexpl.nets import softplus_twin
from theory_checks import curvature_vs_beta_224 as study


def small_relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5),
                         nn.ReLU(), nn.Linear(5, 3)).double().eval().requires_grad_(False)


def test_rows_match_the_dense_oracle_and_resume(tmp_path):
    model, x = small_relu_net(), torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)).double()
    rows = study.beta_rows(model, x, 5.0)
    classes = model(x).argmax(1)
    dense = principal_curvatures(logit(softplus_twin(model, 5.0), classes), x, k=1, method="dense")[0]
    torch.testing.assert_close(torch.tensor([r["kappa_max"] for r in rows], dtype=torch.float64),
                               dense[:, 0].abs(), rtol=1e-6, atol=0)
    assert all(r["relative_residual"] <= study.TOL for r in rows)
    path = tmp_path / study.CSV
    study.append_rows(path, rows)
    study.append_rows(path, [dict(r, beta=50.0) for r in rows])
    back = study.read_rows(path)
    assert [r["beta"] for r in back] == [5.0, 5.0, 50.0, 50.0]
    assert back[0]["kappa_max"] == pytest.approx(rows[0]["kappa_max"], rel=1e-12)


def test_section_reports_the_slope_of_a_known_power_law(tmp_path):
    rows = [dict(beta=b, image=i, cls="0", kappa_max=(1 + i) * b ** 0.5, relative_residual=1e-5, grad_norm=1.0,
                 hvps=10.0, batch_seconds=1.0, d=3 * 224 * 224.0) for b in study.BETAS for i in range(4)]
    study.write_section(tmp_path, rows)
    text = (tmp_path / "section.md").read_text()
    assert "slope of log10 median |kappa_max| against log10 beta: 0.50 over all betas" in text
    assert "224x224 (d = 150,528)" in text and (tmp_path / "curvature_vs_beta_224.png").stat().st_size > 0
