"""One run-folder rule for every command: another run's folder is refused (unless --overwrite), a
run that fails validation writes nothing, and a run with steps resumes where it stopped."""
from __future__ import annotations

import csv
import json

import pytest

from geomexpl import cli, runs


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _attack(out, *extra):
    return cli.main(["attack", "--arch", "mlp", "--n", "2", "--batch-size", "1", "--steps", "2", "--out", str(out),
                     *extra])


def _curvature(out, *extra, betas=("1",)):
    return cli.main(["curvature", "--arch", "mlp", "--n", "1", "--k", "1", "--betas", *betas, "--out", str(out),
                     *extra])


def _sanity(out, *extra):
    return cli.main(["sanity", "--arch", "mlp", "--n", "2", "--vectors", "2", "--out", str(out), *extra,
                     "--methods", "gradient"])


# ------------------------------------------------------------------ the rule itself
def test_claim_run_resumes_the_same_run_and_refuses_another(tmp_path):
    out = tmp_path / "run"
    assert runs.start_run(out, {"command": "x", "a": 1}, 0, "cpu") is False
    assert runs.start_run(out, {"command": "x", "a": 1}, 0, "cpu") is True  # same options: resumed
    assert json.loads((out / "config.json").read_text())["options"]["device_type"] == "cpu"
    with pytest.raises(ValueError, match="holds a run with other options.*--overwrite"):
        runs.start_run(out, {"command": "x", "a": 2}, 0, "cpu")
    with pytest.raises(ValueError, match="other options"):  # a resume on another device
        runs.claim_run(out, {"command": "x", "a": 1, "device_type": "cuda"})
    (out / "results.csv").write_text("old\n")
    assert runs.start_run(out, {"command": "x", "a": 2}, 0, "cpu", overwrite=True) is False
    assert not (out / "results.csv").exists()
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # --overwrite never deletes a folder that is not a run
        with pytest.raises(ValueError, match="holds files but no run"):
            runs.claim_run(stray, {"command": "x"}, overwrite=overwrite)
    assert (stray / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ every command
def test_attack_refuses_validates_first_and_resumes(tmp_path, capsys):
    out = tmp_path / "attack"
    for bad in (["--steps", "0"], ["--n", "5000"]):  # refused before the progress bar, nothing written
        assert cli.main(["attack", "--arch", "mlp", "--out", str(out), *bad]) == 2
        assert not out.exists()
    assert "--steps must be positive" in capsys.readouterr().err
    assert _attack(out) == 0
    before = _snapshot(out)
    assert _attack(out, "--seed", "1") == 2 and _snapshot(out) == before
    assert "holds a run with other options" in capsys.readouterr().err
    assert _attack(out) == 0 and len(list(csv.DictReader((out / "results.csv").open()))) == 2  # resumed
    assert _attack(out, "--seed", "1", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["options"]["seed"] == 1


def test_demo_refuses_another_run_and_validates_first(tmp_path, capsys):
    out = tmp_path / "attack"
    assert _attack(out) == 0
    before = _snapshot(out)
    assert cli.main(["demo", "--out", str(out), "--steps", "1", "--n", "1"]) == 2
    assert _snapshot(out) == before and "holds a run" in capsys.readouterr().err
    fresh = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(fresh), "--n", "0"]) == 2 and not fresh.exists()


def test_curvature_refuses_validates_first_and_resumes(tmp_path, capsys):
    out = tmp_path / "curvature"
    assert _curvature(out, betas=("0",)) == 2 and not out.exists()
    assert _curvature(out) == 0
    before = _snapshot(out)
    assert _curvature(out, "--seed", "3") == 2 and _snapshot(out) == before
    assert _curvature(out, betas=("1", "2")) == 0  # the same run with one more beta: only beta 2 is added
    rows = list(csv.DictReader((out / "curvature.csv").open()))
    assert sorted(float(r["beta"]) for r in rows) == [1.0, 2.0]


def test_sanity_refuses_validates_first_and_resumes(tmp_path, capsys):
    out = tmp_path / "sanity"
    assert cli.main(["sanity", "--arch", "mlp", "--n", "1", "--out", str(out), "--methods",
                     "integrated_gradients:steps=abc"]) == 2
    assert not out.exists() and "integrated_gradients:steps=abc" in capsys.readouterr().err
    assert _sanity(out) == 0
    before = _snapshot(out)
    assert cli.main(["sanity", "--arch", "mlp", "--n", "3", "--vectors", "2", "--out", str(out),
                     "--methods", "gradient"]) == 2  # other images: refused, the tables stay
    assert _snapshot(out) == before
    csc = (out / "csc.csv").read_bytes()
    assert _sanity(out) == 0 and (out / "csc.csv").read_bytes() == csc  # resumed: nothing redone or appended


def test_sanity_layer_is_a_named_modules_path(tmp_path, capsys):
    out = tmp_path / "sanity"
    assert cli.main(["sanity", "--arch", "mlp", "--n", "1", "--vectors", "2", "--layer", "_3", "--out", str(out),
                     "--methods", "gradient"]) == 2
    assert "'_3' is not a layer" in capsys.readouterr().err and not out.exists()
    assert cli.main(["sanity", "--arch", "mlp", "--n", "1", "--vectors", "2", "--layer", "3", "--out", str(out),
                     "--methods", "gradient"]) == 0
    layers = {r["layer"] for r in csv.DictReader((out / "csc.csv").open())}
    assert layers == {"input_1", "0", "1", "2", "3"}  # Flatten, Linear, ReLU, Linear: named_modules() paths


FAKE_CHECK = '''
from theory_checks.report import CheckResult, SubCheck
NAME = "fake"
def run(out_dir, quick, seed):
    return CheckResult(NAME, "a stand-in", "summary", [SubCheck("ok", "nothing", {}, None, "none", True)])
'''


def test_theory_checks_refuse_another_run(tmp_path, monkeypatch, capsys):
    import theory_checks.__main__ as theory

    (tmp_path / "fake_ok.py").write_text(FAKE_CHECK)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(theory, "CHECKS", {"theorem1": "fake_ok", "theorem2": "fake_ok"})
    out = tmp_path / "all"
    assert theory.main(["all", "--quick", "--out", str(out)]) == 0
    before = _snapshot(out)
    assert theory.main(["theorem2", "--quick", "--out", str(out)]) == 2  # would rewrite the 'all' report
    assert _snapshot(out) == before and "holds a run with other options" in capsys.readouterr().err
    assert theory.main(["all", "--quick", "--out", str(out)]) == 0  # the same run is redone
    assert theory.main(["theorem2", "--quick", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["checks"] == ["theorem2"]


def test_benchmarks_write_the_committed_tables_only_when_asked(tmp_path, monkeypatch, capsys):
    import benchmarks.__main__ as bench

    committed = {p: p.read_bytes() for p in bench.COMMITTED.glob("results.*")}
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick"])  # no --out and no --write-results
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--write-results"])
    out = tmp_path / "bench"
    out.mkdir()
    runs.write_json(out / "config.json", {"options": {"command": "benchmarks", "quick": False, "only": None}})
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--out", str(out)])
    assert exit_info.value.code == 2 and "other options" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in bench.COMMITTED.glob("results.*")} == committed


def test_experiments_refuse_with_one_line(tmp_path, monkeypatch, capsys):
    from experiments.__main__ import main

    study = tmp_path / "fig3_similarity"
    study.mkdir()
    runs.write_json(study / "config.json", {"options": {"command": "experiments", "study": "other"}})
    assert main(["fig3_similarity", "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other options" in err and "Traceback" not in err
