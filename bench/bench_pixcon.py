"""Training throughput of PixCon-SR against DenseCL and a global-only MoCo-v2 baseline (issue 5).

What is measured (resnet18, output stride 16 -> a 4 x 4 grid on 64 px views; heads 512 -> 128; queues of 4096;
batch 32; SGD; CPU, 1 torch thread: on the shared 2-core machine two threads ran 3x slower than one; no Ray, no
DataLoader): images/s of full training steps (forward, backward,
optimizer step, EMA update, enqueue) on pre-generated two-view batches of the synthetic scenes, for

* ``moco``: global-only MoCo-v2 (online backbone + global head, momentum target, one direction, one queue);
* ``densecl``: DenseCL as shipped (one direction, similarity matching, no predictors, dense loss on);
* ``densecl-sym``: DenseCL with the symmetric loss: the same four encoder passes as PixCon;
* ``pixcon-sim``: PixCon-Sim (symmetric, predictors, similarity matching, unit weights);
* ``pixcon-sr``: PixCon-SR (PixCon-Sim + semantic reweighting).

Steps interleave: each cycle runs one training step of every method (the order rotating from cycle to cycle),
each step timed on its own, because the speed of a shared machine drifts by 2-3x within minutes; a method's rate is
the batch size over its *median* step time. Ratios are against ``densecl``. The matching + reweighting work of
one PixCon-SR step (backbone-similarity argmax and the SR weights, both directions) is also timed on its own
and reported as a fraction of a DenseCL step. Target (issue 5): matching + reweighting overhead <= 10% over DenseCL.

Run: ``python bench/bench_pixcon.py [--quick] [--json PATH]``. Record results in ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from rayseg.config import load_config
from rayseg.data.views import box_cell_mask, build_two_view_dataset
from rayseg.methods.contrastive import (
    ContrastiveEncoder,
    GlobalInfoNCE,
    MomentumContrast,
    similarity_match,
)
from rayseg.methods.densecl import DenseCL
from rayseg.methods.pixcon import PixCon, SemanticReweighting
from rayseg.models import build_backbone

ARCH = {"backbone": "resnet18", "head": "fcn", "output_stride": 16, "channels": 64, "dropout": 0.1}
FULL = {"batch": 32, "steps": 16, "warmup": 2}  # steps timed per method, after warm-up steps
QUICK = {"batch": 4, "steps": 2, "warmup": 1}
HIDDEN, DIM, QUEUE = 512, 128, 4096


class MoCoV2(MomentumContrast):
    """The global-only baseline: ``L_g`` of view-1 queries against view-2 keys; the dense head is never run."""

    def __init__(self, encoder: ContrastiveEncoder):
        super().__init__(encoder, ARCH, QUEUE, 0.999, "constant")
        self.global_loss = GlobalInfoNCE(0.2)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        f = self.online.backbone(batch["image"])["out"]
        q = F.normalize(self.online.global_head(f.mean(dim=(2, 3))), dim=1)
        with torch.no_grad():
            f_t = self.target.backbone(batch["view2"])["out"]
            k = F.normalize(self.target.global_head(f_t.mean(dim=(2, 3))), dim=1)
        loss = self.global_loss(q, k, self.global_queue.snapshot())
        self.global_queue.enqueue(k)
        return {"global": loss}


def build(name: str) -> MomentumContrast:
    torch.manual_seed(0)
    encoder = ContrastiveEncoder(build_backbone("resnet18", 16), HIDDEN, DIM)
    if name == "moco":
        return MoCoV2(encoder)
    if name.startswith("densecl"):
        return DenseCL(encoder, ARCH, dense_warmup_steps=0, symmetric=name.endswith("sym"), queue_size=QUEUE)
    return PixCon(encoder, ARCH, variant=name.split("-")[1], queue_size=QUEUE, pred_hidden_dim=HIDDEN)


def make_batches(n: int, batch: int) -> list[dict]:
    cfg = load_config(None, ["method=pixcon", "data.num_train=4096"])
    dataset = build_two_view_dataset(cfg.data, cfg.views)
    torch.manual_seed(1)
    return [torch.utils.data.default_collate([dataset[i * batch + j] for j in range(batch)]) for i in range(n)]


def timed_step(method: MomentumContrast, optimizer: torch.optim.Optimizer, batch: dict, step: int, total: int) -> float:
    """Seconds of one full training step (forward, backward, optimizer step, EMA update)."""
    start = time.perf_counter()
    loss = sum(method(batch).values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    method.on_step_end(step + 1, total)
    return time.perf_counter() - start


def matching_seconds(batch: int, repeats: int) -> float:
    """Seconds per step of PixCon-SR's matching + reweighting (both directions) on C5-sized features."""
    g = torch.Generator().manual_seed(0)
    f = [torch.randn(batch, 512, 4, 4, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[0.25, 0.0, 1.0, 0.75]] * batch), torch.tensor([[0.75, 0.25, 0.0, 1.0]] * batch)]
    reweight = SemanticReweighting(2.0, 1e-6)
    start = time.perf_counter()
    for _ in range(repeats):
        for a, b in ((0, 1), (1, 0)):
            _, confidence = similarity_match(f[a], f[b])
            reweight(confidence, box_cell_mask(boxes[a], 4, 4).flatten(1))
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(1)
    names = ["moco", "densecl", "densecl-sym", "pixcon-sim", "pixcon-sr"]
    methods = {name: build(name) for name in names}
    total = sizes["warmup"] + sizes["steps"]
    batches = make_batches(total, sizes["batch"])
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
                  for name, m in methods.items()}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for step in range(total):
        order = names[step % len(names):] + names[:step % len(names)]
        for name in order:
            t = timed_step(methods[name], optimizers[name], batches[step], step, total)
            if step >= sizes["warmup"]:
                seconds[name].append(t)
        if step >= sizes["warmup"]:
            print(f"step {step + 1}/{total}: " + " ".join(f"{n} {seconds[n][-1]:.2f}s" for n in names), flush=True)
    rate = {name: sizes["batch"] / statistics.median(v) for name, v in seconds.items()}  # images/s
    match_s = matching_seconds(sizes["batch"], 20)
    densecl_step_s = statistics.median(seconds["densecl"])

    print(f"\nresnet18 OS16, 64 px views (4 x 4 grid), batch {sizes['batch']}, {torch.get_num_threads()} threads, "
          f"{sizes['steps']} interleaved steps per method, median step time; shared machine")
    print(f"{'method':12s} {'img/s':>7s} {'vs densecl':>11s}")
    for name in names:
        print(f"{name:12s} {rate[name]:7.2f} {rate[name] / rate['densecl']:10.2f}x")
    print(f"time per image, pixcon-sr / densecl     : {rate['densecl'] / rate['pixcon-sr']:.2f}")
    print(f"time per image, pixcon-sr / densecl-sym : {rate['densecl-sym'] / rate['pixcon-sr']:.2f} "
          "(same encoder passes: predictors + reweighting)")
    print(f"time per image, pixcon-sr / pixcon-sim  : {rate['pixcon-sim'] / rate['pixcon-sr']:.2f} (reweighting)")
    print(f"time per image, densecl / moco          : {rate['moco'] / rate['densecl']:.2f} (dense branch + matching)")
    print(f"matching + reweighting, both directions : {1000 * match_s:.2f} ms/step = "
          f"{100 * match_s / densecl_step_s:.2f}% of a densecl step (target <= 10%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                       "cpus": torch.get_num_threads(), "sizes": sizes, "step_seconds": seconds, "images_per_s": rate,
                       "matching_reweighting_s_per_step": match_s, "densecl_step_s": densecl_step_s}, f, indent=2)


if __name__ == "__main__":
    main()
