"""What does the SSA classifier head cost? resnet18-FCN with the plain 1x1 classifier vs the SSA head.

Baseline and SSA run in the same process, interleaved within each round, one thread
(``torch.set_num_threads(1)``), process CPU time (other processes on a busy machine do not count), best of
``--repeats`` rounds after one warm-up. Measured at 512x512 (output stride 8, decoder width 128, 21 classes):

- inference latency of the whole model (eval, no grad, batch ``--batch``): ``model(image)``;
- inference latency of the classifier alone on the decoder features (``B x 128 x 64 x 64``);
- training step time (batch ``--train-batch``): ``Supervised`` forward (all loss terms: 1 for the plain head,
  8 for SSA incl. the teacher), backward, SGD step;
- parameter counts: total, SSA extra, and the extra that inference carries (without the teacher modules).

Run: ``python bench/bench_ssa.py [--size 512] [--batch 1] [--train-batch 2] [--repeats 3] [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from rayseg.methods.supervised import Supervised
from rayseg.models import build_model


def best_seconds(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Best CPU time of each ``fn()`` over ``repeats`` rounds, the functions interleaved within a round."""
    for fn in fns.values():  # warm-up (allocator, one-time kernels)
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return best


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side")
    parser.add_argument("--batch", type=int, default=1, help="inference batch")
    parser.add_argument("--train-batch", type=int, default=2, help="training batch")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the numbers as JSON to this path")
    args = parser.parse_args()
    torch.set_num_threads(1)

    arch = {"backbone": "resnet18", "head": "fcn", "output_stride": 8, "channels": 128, "num_classes": args.num_classes}
    torch.manual_seed(0)
    models = {"plain": build_model(**arch), "ssa": build_model(**arch, classifier="ssa")}
    methods = {name: Supervised(model, [str(i) for i in range(args.num_classes)]) for name, model in models.items()}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for name, m in methods.items()}

    torch.manual_seed(1)
    image = torch.randn(args.batch, 3, args.size, args.size)
    train_image = torch.randn(args.train_batch, 3, args.size, args.size)
    train_mask = torch.randint(0, args.num_classes, (args.train_batch, args.size, args.size))
    train_mask[:, : args.size // 16] = 255

    with torch.no_grad():
        features = models["plain"].eval().forward_features(image)["decoder"]

    def infer(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                models[name].eval()(image)
        return run

    def classify(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                models[name].classifier.eval()(features)
        return run

    def step(name: str) -> Callable[[], None]:
        def run() -> None:
            method, optimizer = methods[name].train(), optimizers[name]
            loss = sum(method({"image": train_image, "mask": train_mask}).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    print(f"resnet18-FCN, plain vs SSA head, {args.size}x{args.size}, {args.num_classes} classes, 1 thread, "
          f"CPU time, best of {args.repeats}")
    results: dict = {}
    for label, make, repeats in (("inference", infer, args.repeats), ("classifier", classify, 5 * args.repeats),
                                 ("train_step", step, args.repeats)):
        seconds = best_seconds({name: make(name) for name in models}, repeats)
        results[label] = {**{f"{name}_s": s for name, s in seconds.items()}, "ratio": seconds["ssa"] / seconds["plain"]}
        print(f"  {label:11s} plain {seconds['plain'] * 1000:9.1f} ms   ssa {seconds['ssa'] * 1000:9.1f} ms   "
              f"ratio {results[label]['ratio']:.3f}")

    ssa_head = models["ssa"].classifier
    teacher = sum(count(m) for name, m in ssa_head.named_children() if name.startswith("teacher_"))
    params = {"plain": count(models["plain"]), "ssa": count(models["ssa"])}
    params["extra"] = params["ssa"] - params["plain"]
    params["extra_inference"] = params["extra"] - teacher
    params["extra_ratio"] = params["extra"] / params["plain"]
    params["extra_inference_ratio"] = params["extra_inference"] / params["plain"]
    results["params"] = params
    print(f"  params      plain {params['plain']:,}   ssa {params['ssa']:,}   extra {params['extra']:,} "
          f"({100 * params['extra_ratio']:.2f} %), at inference {params['extra_inference']:,} "
          f"({100 * params['extra_inference_ratio']:.2f} %)")

    if args.json:
        results["setup"] = {**vars(args), "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                            "processor": platform.processor(), "torch": torch.__version__}
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
