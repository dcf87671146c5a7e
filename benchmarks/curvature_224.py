"""Principal curvatures at the paper's scale, d = 3 x 224 x 224 = 150,528, one case per subprocess.

Model: ``geomexpl.nets.torchvision_like('vgg16')`` with RANDOM weights (torch seed 0; no trained
224x224 weights exist in the repository) as its softplus twin at beta = 10, f = its logit for the
class it predicts; images: uniform random in [0, 1]^(3x224x224) (seed 1). Float32 network, float64
Krylov vectors.

Cases: ``spectra`` (plain against block Lanczos on synthetic clustered spectra, n = 3000), ``hvp`` (one HVP against one input gradient: double backward on the reused first-order
graph, and torch.func forward-over-reverse), and ``SOLVER-bB`` for solver in eigsh / torch (plain
thick-restart Lanczos) / block (block Lanczos, p = 5) and batch B in 1, 4: top-5 curvatures (which='LM')
to a relative residual of 1e-4 with the HVP count per image, the wall time, the peak resident memory
of the case's process (``resource.getrusage``) and the time in input gradients at the same batch.

``python -m benchmarks.curvature_224 [CASE ...]`` runs the cases not yet in ``cases.jsonl`` (each in
its own process, resumable), then writes ``results.md`` here and replaces the ``geometry-224`` rows
of ``benchmarks/results.md`` / ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from benchmarks.harness import Report, side_by_side

HERE = Path(__file__).parent / "curvature_224"
CASES_FILE = HERE / "cases.jsonl"
BENCH = "geometry-224"
BETA, K, TOL = 10.0, 5, 1e-4
SOLVERS = {"eigsh": dict(method="lanczos"), "torch": dict(method="torch"),
           "block": dict(method="torch", block=5)}
SOLVE_CASES = [f"{s}-b{b}" for b in (1, 4) for s in SOLVERS] + ["eigsh-b1-float64"]
CASES = ["hvp", "spectra"] + SOLVE_CASES + ["memory-b4", "spectrum", "precision", "precision-zoo"]
MEMORY_PRODUCTS = 5


def setup(batch: int):
    from geomexpl.geometry import logit
    from geomexpl.nets import softplus_twin, torchvision_like
    torch.manual_seed(0)
    model = softplus_twin(torchvision_like("vgg16").requires_grad_(False), BETA)
    x = torch.rand(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = logit(model, model(x).argmax(1))
    return model, f, x


def hvp_case() -> dict:
    """Medians of 3 interleaved repeats at batch 1."""
    from geomexpl.geometry import HessianVectorProduct, gradient, hvp
    _, f, x = setup(1)
    product = HessianVectorProduct(f, x)
    v = torch.randn_like(x)
    cases = {"gradient": lambda: gradient(f, x), "double backward, graph reused": lambda: product(v),
             "double backward, graph built": lambda: HessianVectorProduct(f, x)(v),
             "forward-over-reverse": lambda: hvp(f, x, v, mode="forward")}
    times = side_by_side(cases, repeats=3)
    err = float((hvp(f, x, v, mode="forward") - product(v)).norm() / product(v).norm())
    return dict(times_s=times, forward_vs_reverse_rel_diff=err)


def solve_case(solver: str, batch: int, maxiter: int | None = None, float64: bool = False) -> dict:
    from geomexpl.geometry import gradient, logit, principal_curvatures
    from geomexpl.geometry.lanczos import default_subspace, memory_estimate
    model, f, x = setup(batch)
    if float64:  # the same twin, classes and images in float64
        with torch.no_grad():
            classes = model(x).argmax(1)
        model, x = model.double(), x.double()
        f = logit(model, classes)
    grad_s = side_by_side({"gradient": lambda: gradient(f, x)}, repeats=2, warmup=0)["gradient"]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if maxiter else "default")
        kappa, info = principal_curvatures(f, x, k=K, tol=TOL, maxiter=maxiter, **SOLVERS[solver])
    seconds = time.perf_counter() - start
    scale = kappa.abs().amax(1, keepdim=True)
    return dict(kappa=kappa.tolist(), relative_residuals=(info.residuals / scale).tolist(), float64=float64,
                hvp_per_image=info.n_hvp.tolist(), seconds=seconds, gradient_s=grad_s,
                gradient_equivalents=seconds / grad_s, maxiter=maxiter,
                krylov_storage_gb=memory_estimate(x[0].numel() - 1, batch, K, default_subspace(K, 1)) / 2**30)


def memory_case(batch: int) -> dict:
    """The plain torch Lanczos cut off after MEMORY_PRODUCTS products: its storage is allocated up front,
    so the peak RSS is that of a full run but for the restart copy and the returned vectors (about 0.1 GiB
    at batch 4)."""
    return solve_case("torch", batch, maxiter=MEMORY_PRODUCTS)


SPECTRA = {  # n = 3000 diagonal operators (Lanczos sees only the spectrum and the start vector)
    "gaps 1e-3": lambda bulk: torch.cat([1 - 1e-3 * torch.arange(5.0, dtype=bulk.dtype), 0.9 * bulk[5:]]),
    "five-fold eigenvalue": lambda bulk: torch.cat([torch.ones(5, dtype=bulk.dtype), 0.9 * bulk[5:]]),
    "no gap (u^4 bulk)": lambda bulk: bulk ** 4,
}


def spectra_case() -> dict:
    """Plain (p = 1) against block (p = 5) Lanczos, top-5 'LM' to tol 1e-4, on spectra with known values."""
    from geomexpl.geometry.lanczos import batched_lanczos
    bulk = torch.rand(3000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = {}
    for name, make in SPECTRA.items():
        eig = make(bulk)[None]
        want = eig.abs().sort(descending=True).values[:, :K]
        for label, block in (("plain", 1), ("block", 5)):
            start = time.perf_counter()
            res = batched_lanczos(lambda v: eig * v, eig.shape[1], 1, K, tol=TOL, block=block)
            out[f"{name}, {label}"] = dict(products=res.steps, converged=res.converged, seconds=time.perf_counter() - start,
                                           max_abs_error=float((res.values.abs() - want).abs().max()))
    return dict(spectra=out)


SPECTRUM_IMAGE, SPECTRUM_K, SPECTRUM_TOL = 1, 10, 1e-3  # eigsh-b4's slowest image: 123 HVPs for the top-5


def spectrum_case() -> dict:
    """The top-SPECTRUM_K |kappa| of image SPECTRUM_IMAGE of the batch-4 images (eigsh, one image): the gap
    after the fifth value, which sets how fast Lanczos resolves the top five."""
    from geomexpl.geometry import logit, principal_curvatures
    model, _, x = setup(4)
    x = x[SPECTRUM_IMAGE:SPECTRUM_IMAGE + 1]
    with torch.no_grad():
        f = logit(model, model(x).argmax(1))
    start = time.perf_counter()
    kappa, info = principal_curvatures(f, x, k=SPECTRUM_K, tol=SPECTRUM_TOL, method="lanczos")
    scale = kappa.abs().amax(1, keepdim=True)
    return dict(image=SPECTRUM_IMAGE, kappa=kappa.tolist(), relative_residuals=(info.residuals / scale).tolist(),
                hvp_per_image=info.n_hvp.tolist(), seconds=time.perf_counter() - start, tol=SPECTRUM_TOL)


def float32_error(model, x: torch.Tensor, classes: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(|L y - L64 y| / |L64 y| [B], L64 y): the curvature operator of ``model`` (float32) against the same
    net in float64, for the tangent vectors y [B, d-1]."""
    import copy
    from geomexpl.geometry import logit
    from geomexpl.geometry.curvature import ShapeOperator
    ly32 = ShapeOperator(logit(model, classes), x)(y)
    ly64 = ShapeOperator(logit(copy.deepcopy(model).double(), classes), x.double())(y)
    return (ly32 - ly64).norm(dim=1) / ly64.norm(dim=1), ly64


def precision_case() -> dict:
    """How exact the float32 curvature operator L is: L y of the float32 twin against the float64 twin, and
    at batch 4 against batch 1, for the same random tangent vectors y of images 0 and 1 (Weyl: an operator
    error e moves each eigenvalue by at most e)."""
    from geomexpl.geometry import logit
    from geomexpl.geometry.curvature import ShapeOperator
    model, _, x = setup(4)
    with torch.no_grad():
        classes = model(x).argmax(1)
    y = torch.randn(4, x[0].numel() - 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batch4 = ShapeOperator(logit(model, classes), x)(y)
    out = {}
    for i in (0, 1):
        xi, ci = x[i:i + 1], classes[i:i + 1]
        ly32 = ShapeOperator(logit(model, ci), xi)(y[i:i + 1])
        error, ly64 = float32_error(model, xi, ci, y[i:i + 1])
        size = ly64.norm()
        out[f"image {i}"] = dict(float32_vs_float64=float(error[0]),
                                 batch4_vs_batch1_float32=float((batch4[i:i + 1] - ly32).norm() / size),
                                 operator_size=float(size / y[i].norm()))
    return dict(precision=out)


def zoo_precision_case() -> dict:
    """The same float32-against-float64 ratio on the trained zoo nets (4 test images each), for contrast."""
    from geomexpl import data, nets
    out = {}
    for arch, dataset in (("vgg", "digits"), ("resnet", "digits"), ("vgg", "photos")):
        model = nets.pretrained(arch, dataset, progress=False)
        x = data.load(dataset, "test")[0][:4]
        with torch.no_grad():
            classes = model(x).argmax(1)
        y = torch.randn(4, x[0].numel() - 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        for beta in (1.0, 10.0, 50.0):
            out[f"{arch}/{dataset}, beta {beta:g}"] = float32_error(nets.softplus_twin(model, beta), x, classes,
                                                                    y)[0].tolist()
    return dict(zoo_precision=out)


def child(case: str) -> dict:
    torch.manual_seed(0)
    runners = {"hvp": hvp_case, "spectra": spectra_case, "memory-b4": lambda: memory_case(4),
               "spectrum": spectrum_case, "precision": precision_case, "precision-zoo": zoo_precision_case,
               "eigsh-b1-float64": lambda: solve_case("eigsh", 1, float64=True)}
    out = runners[case]() if case in runners else solve_case(case.split("-b")[0], int(case.split("-b")[1]))
    out.update(case=case, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
               threads=torch.get_num_threads(), torch=torch.__version__, machine=platform.machine(),
               device="cpu", weights="random (torchvision_like vgg16, seed 0)")
    return out


def done_cases() -> dict[str, dict]:
    if not CASES_FILE.exists():
        return {}
    rows = [json.loads(line) for line in CASES_FILE.read_text().splitlines() if line.strip()]
    return {r["case"]: r for r in rows}


def rows(done: dict[str, dict]) -> Report:
    report = Report()
    if "hvp" in done:
        t = done["hvp"]["times_s"]
        for name in ("double backward, graph reused", "double backward, graph built", "forward-over-reverse"):
            report.add(BENCH, f"vgg16-224 twin: one HVP ({name}) / one input gradient, batch 1",
                       t[name] / t["gradient"], "x")
        report.add(BENCH, "vgg16-224 twin: one input gradient, batch 1", t["gradient"], "s")
    for name, r in done.get("spectra", {}).get("spectra", {}).items():
        label = f"synthetic n=3000, top-5 to tol {TOL:g}, {name}"
        report.add(BENCH, f"{label}: products", r["products"], "HVPs")
        report.add(BENCH, f"{label}: max |error| of the top-5", r["max_abs_error"], "", "<= 1e-4",
                   r["max_abs_error"] <= 1e-4)
    if "memory-b4" in done:
        r = done["memory-b4"]
        report.add(BENCH, f"vgg16-224 twin, plain torch Lanczos, batch 4: peak memory (process RSS) over the first "
                   f"{MEMORY_PRODUCTS} products (storage allocated up front)", r["peak_rss_gb"], "GiB", "<= 4 GB",
                   r["peak_rss_gb"] <= 4)
        report.add(BENCH, "vgg16-224 twin, plain torch Lanczos, batch 4: its Krylov storage (memory_estimate)",
                   r["krylov_storage_gb"], "GiB")
    for case in SOLVE_CASES:
        if case not in done:
            continue
        r = done[case]
        hvps = max(r["hvp_per_image"])
        label = f"vgg16-224 twin, top-5 curvatures (largest magnitude) to rel. residual {TOL:g}, {case}"
        report.add(BENCH, f"{label}: HVPs per image", hvps, "HVPs", "<= 100", hvps <= 100)
        worst = max(max(row) for row in r["relative_residuals"])
        report.add(BENCH, f"{label}: worst relative residual", worst, "", f"<= {TOL:g}", worst <= TOL)
        report.add(BENCH, f"{label}: time", r["seconds"], "s")
        report.add(BENCH, f"{label}: time in input gradients (same batch)", r["gradient_equivalents"], "x")
        batch = len(r["hvp_per_image"])
        goal = "<= 4 GB" if batch == 4 else ""
        report.add(BENCH, f"{label}: peak memory (process RSS)", r["peak_rss_gb"], "GiB", goal,
                   r["peak_rss_gb"] <= 4 if batch == 4 else None)
    return report


def write(done: dict[str, dict]) -> None:
    report = rows(done)
    lines = ["# Curvature at d = 150,528 (VGG-16-224 twin, random weights, CPU)", "",
             "Recorded by `python -m benchmarks.curvature_224` (one process per case; cases.jsonl holds every "
             "number, including the top-5 curvatures of each image). CPU only (no GPU in this session), "
             "a shared 2-core machine.", "", "| measure | value | unit | goal | met |", "|---|---|---|---|---|"]
    for r in report.rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"| {r.measure} | {r.value:.4g} | {r.unit} | {r.goal} | {met} |")
    lines += ["", "Where a run misses the HVP goal, its spectrum is listed below; docs/curvature_solvers.md explains "
              "which solver wins where.", "", "Top-5 |kappa| per image (rows: images):", ""]
    for case, r in done.items():
        if case in SOLVE_CASES and not r.get("maxiter"):
            lines.append(f"- {case}: " + "; ".join(", ".join(f"{abs(v):.5g}" for v in row) for row in r["kappa"]))
    if "spectrum" in done:
        r = done["spectrum"]
        values = [abs(v) for v in r["kappa"][0]]
        lines += ["", f"Top-{len(values)} |kappa| of image {r['image']} (eigsh, tol {r['tol']:g}, {r['hvp_per_image'][0]} "
                  f"HVPs, {r['seconds']:.0f} s): " + ", ".join(f"{v:.5g}" for v in values) +
                  f". Relative gap after the fifth, (|k5| - |k6|) / |k5|: {(values[4] - values[5]) / values[4]:.3g}; "
                  f"between the first and the fifth: {(values[0] - values[4]) / values[0]:.3g}."]
        lines += [certified_elsewhere(done, r["image"], values)]
    if "precision" in done:
        lines += ["", "How exact the float32 curvature operator is (|L y - L64 y| / |L64 y| for a random tangent y; "
                  "Weyl: an operator error e moves each eigenvalue by at most e |L|):", ""]
        for image, r in done["precision"]["precision"].items():
            lines.append(f"- {image}: float32 against float64 {r['float32_vs_float64']:.2g}; float32 at batch 4 against "
                         f"batch 1 {r['batch4_vs_batch1_float32']:.2g}")
    if "precision-zoo" in done:
        zoo = done["precision-zoo"]["zoo_precision"]
        lines += ["", "The same float32-against-float64 ratio on the trained zoo nets (4 test images; min to max): " +
                  "; ".join(f"{name} {min(v):.2g} to {max(v):.2g}" for name, v in zoo.items()) + "."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    merge_into_results(report)


def certified_elsewhere(done: dict[str, dict], image: int, values: list[float]) -> str:
    """Which of the batch-4 runs' top-5 of ``image`` this spectrum lacks, and the reverse: each value carries
    a fresh-HVP residual, so a value further than both residuals from every value of the other list is an
    eigenvalue that list missed, and a list that misses a larger one is not the top-5. Only this list's
    values with a residual within TOL take part."""
    lines = []
    for case in ("eigsh-b4", "torch-b4"):
        if case not in done:
            continue
        r = done[case]
        scale = max(abs(v) for v in r["kappa"][image])
        theirs = [abs(v) for v in r["kappa"][image]]
        mine = [(v, res) for v, res in zip(values, done["spectrum"]["relative_residuals"][0]) if res <= TOL]
        slack = (max(r["relative_residuals"][image]) + max(res for _, res in mine)) * scale
        converged = [v for v, _ in mine]  # this list's values with a residual within TOL
        missing_here = [v for v in theirs if all(abs(v - w) > slack for w in converged)]
        missed_there = [w for w in converged[:5] if all(abs(w - v) > slack for v in theirs)]
        lines.append(f"{case}'s top-5 of image {image} has {len(missing_here)} value(s) absent here "
                     f"({', '.join(f'{v:.5g}' for v in missing_here) or 'none'}) and lacks {len(missed_there)} of this "
                     f"list's first five ({', '.join(f'{v:.5g}' for v in missed_there) or 'none'}), beyond the residuals "
                     f"({slack:.2g}).")
    return " ".join(lines)


def merge_into_results(report: Report, out_dir: Path = Path(__file__).parent) -> None:
    """Replace this benchmark's rows in benchmarks/results.json and rewrite results.md from it."""
    path = out_dir / "results.json"
    payload = json.loads(path.read_text())
    kept = [row for row in payload["rows"] if row["benchmark"] != BENCH]
    merged = Report()
    for row in kept + [r.__dict__ for r in report.rows]:
        merged.add(**row)
    meta = payload["meta"]
    merged.write(out_dir)
    written = json.loads(path.read_text())
    written["meta"] = meta            # keep the suite's metadata; the 224 rows carry their own in cases.jsonl
    path.write_text(json.dumps(written, indent=2))
    text = (out_dir / "results.md").read_text().splitlines()
    text[2] = json.dumps(meta)
    (out_dir / "results.md").write_text("\n".join(text) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curvature_224", description=__doc__.split("\n")[0])
    parser.add_argument("cases", nargs="*", help=f"cases to run, of {CASES} (default: all missing)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--write-only", action="store_true", help="only rewrite the tables")
    args = parser.parse_args()
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown cases {sorted(unknown)}; choose from {CASES}")
    if args.child:
        print("RESULT " + json.dumps(child(args.child)), flush=True)
        return
    HERE.mkdir(exist_ok=True)
    for case in ([] if args.write_only else args.cases or CASES):
        if case in done_cases():
            continue
        print(f"== {case}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.curvature_224", "--child", case],
                              capture_output=True, text=True)
        result = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not result:
            print(proc.stdout[-2000:], proc.stderr[-4000:], flush=True)
            continue
        with CASES_FILE.open("a") as fh:
            fh.write(result[0] + "\n")
        write(done_cases())
    write(done_cases())


if __name__ == "__main__":
    main()
