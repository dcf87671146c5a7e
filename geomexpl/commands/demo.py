"""The end-to-end tour on the embedded default: the digits VGG-style model.

1. load (or train, on first use) the model and explain a few test images;
2. manipulate their gradient explanations towards the maps of images of other classes
   (paper sec. 2.2) and print how close they get while the output stays put;
3. measure the principal curvatures of the level set g = c at those images for several beta
   (paper sec. 3): the curvature grows with beta, which is why beta-smoothing defends;
4. check Theorem 1, |n(p) - n(p0)| <= |lambda_max| d_g, along an attack path, a random curve and a
   geodesic on the level set of the beta = 5 twin (the full check: ``python -m theory_checks``).
Figures, config.json, summary.json, attack.csv (per image) and curvature.csv go to --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from geomexpl import data, nets, runs

DEMO_THEOREM1 = dict(archs=("vgg",), betas=(5.0,), images=1, attack_steps=30, record_every=10, lr=1e-2,
                     curve_points=5, geodesic_points=7, geodesic_iters=10, refine_rounds=2, refine_segments=2,
                     refine_split=4)

HELP = "end-to-end tour: explain, manipulate, measure curvature and check Theorem 1 on the default model"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="folder for figures and summary")
    parser.add_argument("--n", type=int, default=4, help="number of test images")
    parser.add_argument("--steps", type=int, default=300, help="attack steps (the paper uses 1500)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    runs.add_overwrite(parser)


def run(args) -> int:
    from geomexpl import plot
    from geomexpl.attack import explanation_target, manipulate
    from geomexpl.commands.attack import attack_pairs
    from geomexpl.explain import explain, relevance_map
    from geomexpl.geometry import logit, principal_curvatures
    from geomexpl.metrics import pcc
    from theory_checks import theorem1

    device = runs.resolve_device(args.device)
    images, labels = data.load("digits", "test")
    if not 1 <= args.n <= len(images) or args.steps < 1:
        raise ValueError(f"--n must lie in 1..{len(images)} and --steps be >= 1, got {args.n} and {args.steps}")
    options = {"command": "demo", "n": args.n, "steps": args.steps, "seed": args.seed}
    runs.start_run(args.out, options, args.seed, device, overwrite=args.overwrite)
    print("1/4 model: the VGG-style network on digits (32x32), weights bundled or trained on first use")
    model = nets.pretrained("vgg", "digits").to(device)
    first, second = attack_pairs(labels, args.n, args.seed)
    x, x_other = images[first].to(device), images[second].to(device)
    maps = {m: relevance_map(explain(model, x, m)) for m in ("gradient", "grad_x_input", "integrated_gradients")}
    plot.explanations_figure(x, maps, args.out / "explanations.png")
    print(f"    explanations of {args.n} test images -> {args.out / 'explanations.png'}")

    print(f"2/4 manipulation of the gradient explanation ({args.steps} Adam steps, beta 10 -> 100)")
    target = explanation_target(model, x_other, "gradient")
    result = manipulate(model, x, target, "gradient", steps=args.steps, lr=3e-3, progress=True)
    plot.manipulation_figure(result.x, result.map_x, result.target_map, result.x_adv, result.map_adv,
                             args.out / "manipulation.png")
    m = {k: float(v.median()) for k, v in result.metrics().items()}
    print(f"    median PCC(map, target) {m['map_pcc']:.3f} (before: "
          f"{float(pcc(result.map_x, result.target_map).median()):.3f}); image MSE {m['image_mse']:.2e}; "
          f"class kept {m['class_kept']:.0%}; logit change {m['logit_change']:.3f} -> {args.out / 'manipulation.png'}")
    print("3/4 curvature of the level set g_k = c at the same images (Lanczos on the softplus twin)")
    curvature, kappa_rows = {}, []
    for beta in (1.0, 5.0, 20.0):
        kappa, _ = principal_curvatures(logit(nets.softplus_twin(model, beta), result.target), x, k=3, method="torch")
        curvature[beta] = float(kappa[:, 0].abs().median())
        kappa_rows += [{"image": int(first[b]), "beta": beta, "k": j + 1, "kappa": float(kappa[b, j])}
                       for b in range(len(x)) for j in range(kappa.shape[1])]
        print(f"    beta {beta:>4g}: median largest |principal curvature| {curvature[beta]:.3g}")
    print("    smaller beta, flatter level sets: Theorem 1 bounds the change of the explanation by "
          "|kappa_max| x the geodesic distance")
    print("4/4 Theorem 1 on the beta = 5 twin (one image; curves projected onto the level set)")
    rows = theorem1.check_model(model.cpu(), "vgg", DEMO_THEOREM1, args.seed)
    for row in rows:
        print(f"    {row['kind']:>8}: |n(p) - n(p0)| = {row['lhs']:.3g} <= |lambda_max| d_g = {row['rhs']:.3g}: "
              f"{'holds' if row['holds'] else 'FAILS'} (slack {row['slack']:.3g})")
    theorem = [{k: row[k] for k in ("kind", "lhs", "rhs", "slack", "holds")} for row in rows]
    summary = {"attack": m, "median_kappa_max": curvature, "theorem1": theorem, **runs.environment(args.seed, device)}
    runs.write_json(args.out / "summary.json", summary)
    runs.write_csv(args.out / "attack.csv", [{**row, "image_index": int(first[row["example"]])}
                                             for row in result.table()])
    runs.write_csv(args.out / "curvature.csv", kappa_rows)
    print(f"wrote config.json, summary.json, attack.csv, curvature.csv and figures to {args.out}")
    return 0

