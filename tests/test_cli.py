"""The command line: help texts, the attack run's files, resuming, and refusing a mismatched folder."""
import csv
import json
import subprocess
import sys

import pytest

from geomexpl import cli
from geomexpl.commands import attack as attack_cmd


def test_help_explains_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in text
        with pytest.raises(SystemExit):
            cli.main([name, "--help"])
        assert "--" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "geomexpl", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("geomexpl ")


def _attack(out, n=3, **extra):
    argv = ["attack", "--arch", "mlp", "--n", str(n), "--batch-size", "2", "--steps", "3", "--out", str(out)]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return cli.main(argv)


def test_attack_writes_results_config_and_figure(tmp_path):
    assert _attack(tmp_path) == 0
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [int(r["example"]) for r in rows] == [0, 1, 2]
    assert all(r["image_index"] != r["target_index"] for r in rows)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 0 and config["device"] == "cpu" and "torch" in config["versions"]
    assert config["options"]["method"] == "gradient"
    assert (tmp_path / "manipulation.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["map_pcc"]["n"] == 3 and summary["map_pcc"]["p10"] <= summary["map_pcc"]["p90"]


def test_interrupted_attack_resumes_without_redoing(tmp_path, monkeypatch):
    from geomexpl import attack

    real = attack.manipulate
    calls = []

    def flaky(model, x, *args, **kwargs):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(attack, "manipulate", flaky)
    with pytest.raises(KeyboardInterrupt):
        _attack(tmp_path, n=5)
    assert len(list(csv.DictReader((tmp_path / "results.csv").open()))) == 2
    calls.clear()
    monkeypatch.setattr(attack, "manipulate", real)
    counted = []
    monkeypatch.setattr(attack, "manipulate", lambda m, x, *a, **k: counted.append(len(x)) or real(m, x, *a, **k))
    assert _attack(tmp_path, n=5) == 0
    assert counted == [2, 1]  # only the two batches that were not done
    assert [int(r["example"]) for r in csv.DictReader((tmp_path / "results.csv").open())] == [0, 1, 2, 3, 4]


def test_attack_refuses_a_folder_of_another_run(tmp_path, capsys):
    assert _attack(tmp_path) == 0
    assert _attack(tmp_path, lr=0.5) == 2
    assert "holds a run with other options" in capsys.readouterr().err


def test_attack_rejects_unknown_method(tmp_path, capsys):
    assert cli.main(["attack", "--method", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown explanation method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "config.json").exists()


def test_attack_pairs_are_of_different_classes():
    import torch

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    first, second = attack_cmd.attack_pairs(labels, 6, seed=3)
    assert (labels[first] != labels[second]).all()
    torch.testing.assert_close(first, attack_cmd.attack_pairs(labels, 6, seed=3)[0])


def test_demo_runs_end_to_end(tmp_path):
    assert cli.main(["demo", "--n", "2", "--steps", "3", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"explanations.png", "manipulation.png"} <= {p.name for p in tmp_path.iterdir()}
    kappa = summary["median_kappa_max"]
    assert float(kappa["1.0"]) < float(kappa["20.0"])  # flatter level sets at small beta
    assert {row["kind"] for row in summary["theorem1"]} == {"attack", "random", "geodesic"}
    assert all(row["holds"] and row["lhs"] <= row["rhs"] for row in summary["theorem1"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["options"] == {"command": "demo", "n": 2, "steps": 3, "seed": 0, "device_type": "cpu"}
    attack_rows = list(csv.DictReader((tmp_path / "attack.csv").open()))
    assert len(attack_rows) == 2 and {"map_pcc", "image_index"} <= set(attack_rows[0])
    assert len(list(csv.DictReader((tmp_path / "curvature.csv").open()))) == 3 * 2 * 3  # betas x images x k
