"""experiments/: registry, task splitting, resumable runs, the Ray executor and the report."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import common
from experiments.__main__ import main, parse
from experiments.executors import run_local

def _rows(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


@settings(deadline=None, max_examples=40)
@given(n=st.integers(1, 200), size=st.integers(1, 64))
def test_batches_cover_every_item_once(n, size):
    spans = common.batches(n, size)
    items = [i for a, b in spans for i in range(a, b)]
    assert items == list(range(n))
    assert all(0 < b - a <= size for a, b in spans)


def test_task_seed_depends_on_seed_and_key_only():
    assert common.task_seed(0, "gradient/0-8") == common.task_seed(0, "gradient/0-8")
    assert common.task_seed(0, "gradient/0-8") != common.task_seed(1, "gradient/0-8")
    assert common.task_seed(0, "gradient/0-8") != common.task_seed(0, "gradient/8-16")


def test_every_study_is_registered_with_the_interface():
    for name in common.STUDIES:
        module = common.study(name)
        cfg = {"study": name, "quick": True, "seed": 0, **module.config(True)}
        keys = [t["task"] for t in module.tasks(cfg)]
        assert keys and len(keys) == len(set(keys)), name  # independent, uniquely named tasks
        assert isinstance(module.TITLE, str) and callable(module.run_task)
        assert callable(module.figures) and callable(module.claims)
    with pytest.raises(ValueError, match="unknown study"):
        common.study("fig99")


def test_cli_rejects_unknown_study_and_executor():
    with pytest.raises(SystemExit):
        parse(["fig99", "--out", "x"])
    with pytest.raises(SystemExit):
        parse(["cost", "--out", "x", "--executor", "slurm"])


def test_local_executor_hands_back_every_task_in_order():
    seen = []
    run_local(lambda t: [t["task"] * 2], [{"task": 1}, {"task": 2}], lambda t, rows: seen.append((t["task"], rows)))
    assert seen == [(1, [2]), (2, [4])]


def test_quick_run_writes_table_config_figure_claims_and_report(tmp_path, capsys):
    assert main(["fig3_similarity", "--out", str(tmp_path), "--quick", "--seed", "3"]) == 0
    out = tmp_path / "fig3_similarity"
    rows = _rows(out / "results.csv")
    cfg = json.loads((out / "config.json").read_text())
    assert len(rows) == cfg["options"]["n"] * len(cfg["options"]["methods"]) * len(cfg["options"]["rates"])
    assert cfg["seed"] == 3 and cfg["device"] in ("cpu", "cuda") and "torch" in cfg["versions"]
    assert all(float(r["class_kept"]) in (0.0, 1.0) and -1 <= float(r["map_pcc"]) <= 1 for r in rows)
    assert (out / "maps.png").stat().st_size > 0 and (out / "images.png").stat().st_size > 0
    claims = json.loads((out / "claims.json").read_text())
    assert claims and all(c["verdict"] in common.VERDICTS for c in claims)
    report = (tmp_path / "REPORT.md").read_text()
    assert report.count("| ") >= len(claims) and "report_figures/fig3_similarity__maps.png" in report
    assert (tmp_path / "report_figures" / "fig3_similarity__maps.png").is_file()
    # another seed never mixes into this folder: a one-line error, no traceback
    assert main(["fig3_similarity", "--out", str(tmp_path), "--quick", "--seed", "4"]) == 2
    assert "holds a run with other options" in capsys.readouterr().err


def test_killed_run_resumes_without_redoing_finished_tasks(tmp_path, monkeypatch):
    module = common.study("fig7_pixel_flipping")
    real = module.run_task
    calls = []

    def dies_after_first(cfg, task, device, workdir):
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(task["task"])
        return real(cfg, task, device, workdir)

    monkeypatch.setattr(module, "run_task", dies_after_first)
    with pytest.raises(KeyboardInterrupt):
        common.run_study("fig7_pixel_flipping", tmp_path, quick=True)
    first = _rows(tmp_path / "fig7_pixel_flipping" / "results.csv")
    assert {r["task"] for r in first} == {calls[0]}

    resumed = []

    def counting(cfg, task, device, workdir):
        resumed.append(task["task"])
        return real(cfg, task, device, workdir)

    monkeypatch.setattr(module, "run_task", counting)
    run = common.run_study("fig7_pixel_flipping", tmp_path, quick=True)
    all_tasks = [t["task"] for t in module.tasks(run.cfg)]
    assert sorted(resumed) == sorted(set(all_tasks) - {calls[0]})  # only the unfinished ones ran
    assert {r["task"] for r in run.rows} == set(all_tasks)
    assert first == [r for r in _rows(tmp_path / "fig7_pixel_flipping" / "results.csv") if r["task"] == calls[0]]
    resumed.clear()
    common.run_study("fig7_pixel_flipping", tmp_path, quick=True)
    assert resumed == []  # a finished study does no work again


def test_ray_executor_fills_the_same_table_as_local(tmp_path):
    ray = pytest.importorskip("ray")
    common.run_study("cost", tmp_path / "local", quick=True)
    assert not ray.is_initialized()
    try:  # the executor starts a local Ray instance itself, with this checkout on the workers' path
        run = common.run_study("cost", tmp_path / "ray", quick=True, executor="ray")
        assert ray.cluster_resources().get("CPU", 0) >= 1
    finally:
        ray.shutdown()
    local = _rows(tmp_path / "local" / "cost" / "results.csv")
    remote = _rows(tmp_path / "ray" / "cost" / "results.csv")
    key = lambda r: (r["task"], r["setting"])  # noqa: E731
    assert sorted(map(key, local)) == sorted(map(key, remote)) == sorted(map(key, run.rows))
    passes = {key(r): r["forward_passes"] for r in local}
    assert all(passes[key(r)] == r["forward_passes"] for r in remote)  # timings differ, counts do not
    assert os.path.isfile(tmp_path / "ray" / "cost" / "cost.png")


def test_every_study_runs_quick_end_to_end(tmp_path):
    assert main(["all", "--out", str(tmp_path), "--quick"]) == 0
    for name in common.STUDIES:
        out = tmp_path / name
        claims = json.loads((out / "claims.json").read_text())
        assert claims and all(c["verdict"] in common.VERDICTS for c in claims), name
        assert _rows(out / "results.csv"), name
        figures = {c["figure"] for c in claims if c["figure"] and c["verdict"] != "not run"}
        assert figures and all((out / f).stat().st_size > 0 for f in figures), name
    report = (tmp_path / "REPORT.md").read_text()
    assert all(f"## {name}:" in report for name in common.STUDIES)


ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path("experiments") / "results"  # relative: the report names the folder as given


def test_committed_report_is_rederived_from_the_committed_tables(monkeypatch):
    """Every number and verdict of experiments/REPORT.md follows from the committed tables: editing
    either by hand (or a table without re-making the report) fails here."""
    import re

    monkeypatch.chdir(ROOT)
    report = (ROOT / "experiments" / "REPORT.md").read_text()
    names = re.findall(r"^## (\w+)", report, re.M)  # the studies the report covers, in its order
    assert any((RESULTS / n / "config.json").is_file() for n in names)
    lines, shown = common.report_lines(RESULTS, names)
    assert report == "\n".join(lines) + "\n"
    for name, figures in shown.items():  # every figure the report shows is committed
        assert all((ROOT / "experiments" / "report_figures" / f"{name}__{f}").is_file() for f in figures), name


def test_a_changed_table_value_changes_the_derived_report(tmp_path):
    """The re-derivation really reads the numbers: shifting one study's map PCC changes its verdicts."""
    out = tmp_path / "results"
    assert main(["supp_second_dataset", "--out", str(out), "--quick"]) == 0
    before, _ = common.report_lines(out, ["supp_second_dataset"])
    path = out / "supp_second_dataset" / "results.csv"
    rows = _rows(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**r, "map_pcc": str(float(r["map_pcc"]) + 0.5)} for r in rows])
    after, _ = common.report_lines(out, ["supp_second_dataset"])
    assert before != after


def test_a_started_run_without_a_finished_task_is_reported_as_such(tmp_path):
    """--report-only while a long run has written its config but no row yet: no crash, no claim, the task count."""
    out = tmp_path / "results"
    assert main(["supp_second_dataset", "--out", str(out), "--quick"]) == 0
    (out / "supp_second_dataset" / "results.csv").unlink()
    assert main(["supp_second_dataset", "--out", str(out), "--report-only"]) == 0
    text = (out / "REPORT.md").read_text()
    assert "Started, no task finished yet (0 of 1): no claim can be checked." in text and "| claim |" not in text


def test_readme_training_times_and_accuracies_match_the_weight_files():
    """The README's zoo facts are read from the metadata stored in the bundled weight files."""
    import re

    from geomexpl import nets

    bundled = ROOT / "geomexpl" / "nets" / "pretrained"
    readme = (ROOT / "README.md").read_text()
    archs = ("vgg", "resnet", "alexnet", "densenet", "mlp")
    meta = {(a, d): nets.metadata(a, d, bundled) for a in archs for d in ("digits", "faces")}
    for dataset in ("digits", "faces"):
        times = {a: meta[a, dataset]["train_seconds"] for a in archs}
        fastest, slowest = min(times.values()), max(times.values())
        assert f"{fastest:.0f} s (MLP) to {slowest:.0f} s" in readme, dataset
    for arch in archs:
        row = re.search(rf"^\| {arch} \| ([\d.]+)% \| ([\d.]+)% \|$", readme, re.M)
        assert row, arch
        for dataset, shown in zip(("digits", "faces"), row.groups()):
            assert float(shown) == pytest.approx(100 * meta[arch, dataset]["test_accuracy"], abs=0.051), (arch, dataset)
    assert "digits (359 test images)" in readme


def test_attack_quality_doc_shows_the_table_generated_from_its_folders():
    from experiments.attack_quality_table import table

    doc = (ROOT / "docs" / "attack_quality" / "README.md").read_text()
    shown = doc.split("<!-- table: generated -->\n")[1].split("\n<!-- end of table -->")[0].strip()
    assert shown == table()


@pytest.mark.parametrize("arch,heading", [("vgg", "**VGG**"), ("resnet", "**ResNet**")])
def test_sanity_doc_random_logit_column_is_read_from_the_committed_run(arch, heading):
    """docs/sanity.md's random-logit SSIM (median, 10th-90th percentile) per method equals the
    committed table of `geomexpl sanity` under docs/sanity_runs/<arch>/."""
    import numpy as np

    path = ROOT / "docs" / "sanity_runs" / arch / "random_logit.csv"
    rows = _rows(path)
    doc = (ROOT / "docs" / "sanity.md").read_text()
    section = doc.split("### Cascading randomisation and random logit")[1].split(heading + "\n")[1]
    shown = {}
    for line in section.strip().split("\n\n")[0].splitlines()[2:]:  # the table after the heading
        cells = [c.strip() for c in line.strip("|").split("|")]
        shown[cells[0].replace(" (zB + z+)", "")] = cells[-1]
    assert shown
    for method, text in shown.items():
        v = np.array([float(r["ssim"]) for r in rows if r["method"] == method])
        p10, p90 = np.percentile(v, [10, 90])
        assert text == f"{np.median(v):.2f} ({p10:.2f}–{p90:.2f})", method
