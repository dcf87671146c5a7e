"""Train zoo models (seeded) and store their weights in the cache or a chosen folder.

The weights bundled with geomexpl were made with
``geomexpl train --arch all --dataset digits faces --out geomexpl/nets/pretrained``, and the photo nets with
``geomexpl train --arch vgg resnet --dataset photos --size 64 --out geomexpl/nets/pretrained`` (and ``--size 128``).
"""
from __future__ import annotations

import json
from pathlib import Path

from geomexpl import data, runs
from geomexpl.nets import weights, zoo

HELP = "train zoo models and cache their weights"


def configure(parser) -> None:
    parser.add_argument("--arch", nargs="+", default=["all"], choices=zoo.ARCHS + ("all",),
                        help="architectures to train")
    parser.add_argument("--dataset", nargs="+", default=["digits"], choices=data.names() + ("all",),
                        help="datasets to train on")
    parser.add_argument("--out", type=Path, default=None, help="folder for the weights (default: the user cache)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', ...")
    parser.add_argument("--size", type=int, default=None, help="input size (default: each dataset's own; "
                        "the photos come at 64 or 128)")


def run(args) -> int:
    archs = zoo.ARCHS if "all" in args.arch else args.arch
    datasets = data.names() if "all" in args.dataset else args.dataset
    for dataset in datasets:
        spec = data.spec(dataset, args.size)
        for arch in archs:
            model = zoo.build(arch, spec.channels, spec.num_classes, spec.size)
            meta = weights.train(model, dataset, epochs=weights.epochs(arch, dataset), seed=args.seed,
                                 size=spec.size, device=runs.resolve_device(args.device))
            model.cpu()  # weight files hold CPU tensors
            meta["arch"] = arch
            path = weights.weight_path(arch, dataset, spec.size, args.out)
            weights.save_weights(model, path, meta)
            print(json.dumps({k: meta[k] for k in ("arch", "dataset", "test_accuracy", "train_seconds")}))
    return 0
