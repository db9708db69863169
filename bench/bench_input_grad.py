"""SmoothGrad throughput with and without the polyphase stem input gradient (``label.explainer.polyphase_stem``).

Setup: the labeling bench's ensemble (resnet18, mobilenet_v3_small, shufflenet_v2_x1_0; ``--archs`` for
another, e.g. the demo's resnet18,resnet34), random weights, 10 classes, ``prepare_for_explanation`` with BatchNorm folding and channels-last in both arms, the only
difference being ``polyphase_stem``. Input: batches of 8 random 64x64 images, S = 16 samples (128 samples per
forward/backward). Arms alternate ``--rounds`` times (a shared machine drifts within minutes); images/s per arm
is the mean over rounds. Also checks that both arms give the same maps (max abs difference). Runs with 1 and
with 2 torch threads (``--threads``). No Ray: it also runs on the GPU machine (``--device cuda``).

Run: ``python bench/bench_input_grad.py [--rounds R] [--threads 1,2] [--device cpu|cuda] [--archs A,B]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rayseg.config import ExplainerSection  # noqa: E402

from rayseg.labeling.explainers import explain_ensemble, prepare_for_explanation  # noqa: E402
from rayseg.labeling.members import Member, load_members  # noqa: E402

ARCHS = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0")
BATCH, SAMPLES, SIZE, CALLS = 8, 16, 64, 3


def rate(models: list, x: torch.Tensor, y: torch.Tensor, cfg: ExplainerSection) -> tuple[float, torch.Tensor]:
    generator = torch.Generator(device=x.device).manual_seed(0)
    with torch.enable_grad():
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(CALLS):
            maps = explain_ensemble(models, x, y, cfg, generator=generator)[0]
        if x.is_cuda:
            torch.cuda.synchronize()
    return CALLS * len(x) / (time.perf_counter() - start), maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated torchvision classifiers")
    args = parser.parse_args()
    archs = args.archs.split(",")
    device = torch.device(args.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = load_members([Member(arch=a) for a in archs], 10, device=device)  # random weights, seeded by index
    on = ExplainerSection(samples=SAMPLES)
    off = dataclasses.replace(on, polyphase_stem=False)
    arms = {"polyphase": [prepare_for_explanation(m, on) for m in raw],
            "oneDNN": [prepare_for_explanation(m, off) for m in raw]}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g).to(device)
    y = torch.randint(0, 10, (BATCH,), generator=g).to(device)
    print(f"SmoothGrad of {'+'.join(archs)}, {BATCH} images x {SAMPLES} samples, {SIZE}x{SIZE}, {device}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for models in arms.values():
            rate(models, x, y, on)  # warm-up
        rates: dict[str, list[float]] = {k: [] for k in arms}
        maps = {}
        for _ in range(args.rounds):
            for name, models in arms.items():
                r, maps[name] = rate(models, x, y, on)
                rates[name].append(r)
        mean = {k: sum(v) / len(v) for k, v in rates.items()}
        diff = (maps["polyphase"] - maps["oneDNN"]).abs().max().item() / maps["oneDNN"].abs().max().item()
        print(f"{threads} thread(s): polyphase {mean['polyphase']:.2f} img/s, oneDNN backward-data "
              f"{mean['oneDNN']:.2f} img/s -> {mean['polyphase'] / mean['oneDNN']:.3f}x   (runs: "
              + "; ".join(f"{k} " + ", ".join(f"{r:.2f}" for r in v) for k, v in rates.items())
              + f")   max map difference {diff:.1e} of the map's max")


if __name__ == "__main__":
    main()
