"""``theory_checks.theorem1.check`` on user models and the zoo: a realistic curvature error must FAIL, the true
curvature PASS; messages for models Theorem 1 does not cover; the CLI forms and the quick report."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from geomexpl import data, nets
from theory_checks import theorem1 as t1
from conftest import run_theory_check

SMALL = dict(attack_steps=20, ascent_steps=1, max_points=9)


def scaled(factor):
    """The Lanczos |kappa_max| times ``factor`` (0.8: a curvature 20% too small)."""
    return lambda f, x: (lambda k: (k[0] * factor, k[1]))(t1.top_curvature(f, x))


class ResidualCNN(nn.Module):
    """A small CNN with a residual addition; ``act`` nn.Softplus (smooth) or nn.ReLU (checked on its twin)."""

    def __init__(self, act: nn.Module, pool: nn.Module | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act1, self.act2 = act, type(act)(**({"beta": act.beta} if isinstance(act, nn.Softplus) else {}))
        self.pool = pool or nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = self.act1(self.conv1(x))
        h = h + self.act2(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


def blobs(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """Images made here: a Gaussian blob at a random place, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    grid = torch.arange(size, dtype=torch.float32)
    centre = torch.rand(n, 2, generator=gen) * (size - 1)
    d2 = (grid.view(1, -1, 1) - centre[:, :1, None]) ** 2 + (grid.view(1, 1, -1) - centre[:, 1:, None]) ** 2
    return torch.exp(-d2 / 4)[:, None]


def test_check_on_a_user_softplus_cnn_with_a_residual_add():
    model = ResidualCNN(nn.Softplus(beta=4.0)).eval()
    x = blobs(3)
    result = t1.check(model, x, beta=None)
    print(result)
    print(result.table())
    assert result.passed and result.tests == len(result.segments) > 0
    assert result.informative >= 0.8 * result.tests
    assert {r["kind"] for r in result.segments} == {"attack", "random", "geodesic", "tight", "short"}
    assert all(r["verdict"] == "PASS" and r["pool_switches"] is None for r in result.segments)
    b = result.bracket   # residual add: the spectral graph bound exists, eq. (10) does not
    assert b["upper_frobenius"] != b["upper_frobenius"] and b["lower"] <= b["upper_spectral"]
    assert b["point_bound_violations"] == 0 and b["ascent_starts"] == 6
    assert "verdict" in result.table(5) and len(result.table(5).splitlines()) == 6


def test_check_builds_the_twin_of_a_relu_model_and_reports_max_pool_switches():
    model = ResidualCNN(nn.ReLU(), pool=nn.MaxPool2d(2)).eval()
    result = t1.check(model, blobs(2, seed=1), beta=4.0, size=SMALL)
    assert result.passed and result.informative > 0
    assert all(r["pool_switches"] is not None for r in result.segments)
    assert any("max pool" in note and "EXEMPT" in note for note in result.notes)
    assert model.conv1.weight.dtype == torch.float32          # the user's model is left as it was


@pytest.mark.parametrize("model, beta, message", [
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.GELU(), nn.Linear(8, 2)), 2.0, "calls no ReLU.*beta=None"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LeakyReLU(), nn.Linear(8, 2)), 2.0, "smooth network.*leaky_relu"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2)), None, "pass beta"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Softplus(), nn.Linear(8, 2)), 2.0, "as it is with beta=None"),
    (nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), 2.0, "calls no ReLU"),
])
def test_models_outside_the_theorem_get_a_message_naming_the_problem(model, beta, message):
    with pytest.raises(ValueError, match=message):
        t1.check(model, blobs(2), beta=beta)


@pytest.fixture(scope="module")
def mlp_digits():
    x, _ = data.load("digits", "test")
    return nets.pretrained("mlp", "digits", progress=False), x[:2]


def test_a_curvature_20_percent_too_small_fails_on_the_tight_curves_and_the_true_one_passes(mlp_digits):
    model, x = mlp_digits
    true = t1.check(model, x, beta=5.0, size=SMALL)
    wrong = t1.check(model, x, beta=5.0, size=SMALL, curvature=scaled(0.8))
    print(true)
    print(f"informative tests: {true.informative} of {true.tests} (could have failed)")
    assert true.passed and true.informative >= 0.8 * true.tests
    tight = [r for r in true.segments if r["kind"] == "tight"]
    assert all(r["verdict"] == "PASS" for r in tight) and max(r["ratio"] for r in tight) > 0.95
    assert not wrong.passed
    wrong_tight = [r for r in wrong.segments if r["kind"] == "tight" and r["scale"] <= 0.01]
    assert wrong_tight and all(r["verdict"] == "FAIL" for r in wrong_tight)
    print(f"kappa x 0.8: {wrong.counts['failed']} of {wrong.tests} segment tests FAIL")


def test_cli_runs_a_user_model_module_with_weights_and_an_image_folder(tmp_path):
    from PIL import Image

    (tmp_path / "user_t1_model.py").write_text(
        "from torch import nn\n\n"
        "def build():\n"
        "    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 2))\n")
    sys.path.insert(0, str(tmp_path))
    try:
        from user_t1_model import build
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(1)
    torch.save(build().state_dict(), tmp_path / "w.pt")
    for label in ("a", "b"):
        (tmp_path / "img" / label).mkdir(parents=True)
        for i, img in enumerate(blobs(2, seed=ord(label))):
            Image.fromarray((img[0].numpy() * 255).astype("uint8")).save(tmp_path / "img" / label / f"{i}.png")
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{repo}:{tmp_path}", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    base = [sys.executable, "-m", "theory_checks.theorem1", "--model", "user_t1_model:build", "--images",
            str(tmp_path / "img"), "--size", "8", "--beta", "3", "--n", "3", "--rows", "5"]
    proc = subprocess.run(base + ["--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "out")], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout and "verdict" in proc.stdout
    bracket = json.loads((tmp_path / "out" / "bracket.json").read_text())
    assert bracket["counts"]["informative"] > 0 and (tmp_path / "out" / "segments.csv").exists()


def test_user_model_loader_refuses_pickled_code_and_bad_specs(tmp_path):
    from theory_checks.theorem1.__main__ import load_user_model

    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    with pytest.raises(nets.WeightFileError, match="unsafe"):
        load_user_model("torch.nn:Identity", evil)
    with pytest.raises(ValueError, match="module:attr"):
        load_user_model("torch.nn.Identity", None)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        load_user_model("math:pi", None)


def test_quick_report_counts_informative_tests_and_writes_tables(tmp_path):
    proc = run_theory_check("theorem1", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (check,) = json.loads((tmp_path / "results.json").read_text())["checks"]
    assert [s["name"] for s in check["subchecks"]] == ["segments_mlp", "bracket_mlp", "flatness_mlp"]
    seg = check["subchecks"][0]["numbers"]
    assert seg["all_failed"] == 0 and all(f >= 0.8 for f in seg["informative_fraction_by_beta"])
    bracket = check["subchecks"][1]["numbers"]
    assert all(lo <= up for lo, up in zip(bracket["lower_by_beta"], bracket["upper_spectral_by_beta"]))
    assert {"theorem1/segments.csv", "theorem1/bracket.csv", "theorem1/segment_ratios.png"} <= set(check["files"])
    assert len(list((tmp_path / "theorem1" / "parts").glob("*.json"))) == len(t1.report.QUICK["betas"])
    report = (tmp_path / "report.md").read_text()
    assert "segments_mlp — **PASS**" in report and "**FAIL**" not in report


@pytest.mark.gpu
def test_check_on_cuda_matches_cpu():
    model = ResidualCNN(nn.ReLU()).eval()
    x = blobs(2, seed=3)
    cpu = t1.check(model, x, beta=4.0, size=SMALL)
    gpu = t1.check(model.cuda(), x.cuda(), beta=4.0, size=SMALL)
    # the float32 attack differs in rounding on the GPU, so the curves (and counts) may differ slightly
    assert gpu.passed and cpu.passed and gpu.informative >= 0.8 * gpu.tests
    assert gpu.bracket["lower"] == pytest.approx(cpu.bracket["lower"], rel=0.1)


def test_a_written_run_reads_back_so_one_check_can_be_replaced(tmp_path):
    from dataclasses import asdict

    from theory_checks.report import CheckResult, SubCheck, read_run, write_run

    results = [CheckResult("theorem2", "t", "s", [SubCheck("x", "m", {"k": 1.5, "v": [1, 2]}, None, "r", False,
                                                          "e", ["a.csv"])], ["a.csv"])]
    write_run(results, tmp_path, {"seed": 0, "quick": True, "device": "cpu", "versions": {"torch": "x"}})
    back, config = read_run(tmp_path)
    assert [asdict(r) for r in back] == [asdict(r) for r in results] and config["seed"] == 0
    assert not back[0].passed
