"""Fine-tune a trained zoo model with a curvature-lowering defence (Dombrowski et al. 2022).

Starts from the zoo model (``geomexpl train``; bundled or cached), fine-tunes a copy with the
defence and stores the weights in the user cache or --out; prints one JSON line of metadata
(defence, strength, test accuracy, mean penalty of the last epoch, training time, the
weight file). Defences:
plain (none; --strength 0), weight_decay (L2 coefficient), softplus (beta: the smooth twin is
trained), hessian (weight of the Hutchinson estimate of ||H||_F^2 of the true-class logit) and
alignment (weight of the local gradient alignment of Joo et al. 2023). See docs/robust.md.
Example: ``geomexpl robust --arch vgg --dataset digits --defence hessian --strength 1e-7``.
"""
from __future__ import annotations

import json
from pathlib import Path

from geomexpl import data, runs
from geomexpl.nets import zoo

HELP = "fine-tune a zoo model with a training-time defence that lowers curvature"


def configure(parser) -> None:
    from geomexpl.robust import DEFENCES, HESSIAN_METHODS

    parser.add_argument("--arch", default="vgg", choices=zoo.ARCHS, help="zoo architecture")
    parser.add_argument("--dataset", default="digits", choices=data.names(), help="built-in dataset")
    parser.add_argument("--defence", required=True, choices=DEFENCES, help="the defence")
    parser.add_argument("--strength", type=float, default=None,
                        help="the defence's strength (beta for softplus; required except for plain)")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0, help="fine-tuning seed")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam learning rate")
    parser.add_argument("--probes", type=int, default=4, help="Hutchinson probes per example (hessian)")
    parser.add_argument("--hessian-method", choices=HESSIAN_METHODS, default="fd",
                        help="Hessian-vector products: finite differences (works on ReLU nets) or exact")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the dataset's own)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the user cache)")
    parser.add_argument("--retrain", action="store_true", help="fine-tune again even if the weights exist")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', ...")


def run(args) -> int:
    from geomexpl.robust import check_defence, robust_path, robust_pretrained

    if args.strength is None:
        if args.defence != "plain":
            raise ValueError(f"--strength is required for the {args.defence} defence")
        args.strength = 0.0
    check_defence(args.defence, args.strength)
    for name in ("epochs", "probes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lr <= 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    data.spec(args.dataset, args.size)
    device = runs.resolve_device(args.device)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file, not a folder")
    _, meta = robust_pretrained(args.arch, args.dataset, args.defence, args.strength, seed=args.seed,
                                epochs=args.epochs, size=args.size, directory=args.out, retrain=args.retrain,
                                device=device, lr=args.lr, probes=args.probes, hessian_method=args.hessian_method)
    path = robust_path(args.arch, args.dataset, args.defence, args.strength, args.seed, args.size, args.out)
    print(json.dumps({**meta, "weights": str(path)}))
    return 0
