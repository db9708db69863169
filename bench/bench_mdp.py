"""MDP cost: training-step throughput against supervised training of the same backbone, and the memory of the
pixel-to-prototype logits against a pixel-to-pixel contrastive loss on the same pixels.

1. Throughput (plain loop in this process, no Ray; ``torch.set_num_threads(2)``; CPU): resnet18 at output stride 8,
   synthetic domains A + B (``K_total = 14``), 64x64 crops, batch 16, SGD. The batches are collated once beforehand
   and reused, so data loading is excluded and both methods see identical tensors. Variants:

   * ``supervised``: ``rayseg.methods.Supervised`` (resnet18 + FCN head, 64 channels, ``K_total``-way CE);
   * ``mdp``: ``rayseg.methods.MDP`` with the defaults (mixing of 2/3 of the batch, p2p + CSC2, prototype update);
   * ``mdp-nomix``: the same without mixing, to show what mixing costs.

   The three variants are built once and their optimizer steps (forward, backward, update) are interleaved one
   by one, in a rotating order, for ``--rounds`` rounds after 2 warm-up rounds, because the speed of a shared
   machine drifts by far more than the effect measured. Overhead = the median over rounds of
   ``t(mdp) / t(supervised)`` − 1 (target <= 15%); images/s = batch / median step time.

2. Memory of the loss (forward + backward from the pixel embeddings ``z``, ``N x D``, D = 128, to their gradient):

   * MDP: ``L_p2p + β L_csc`` against ``K_total = 342`` prototypes (VOC 21 + ADE20K 150 + COCO-Stuff 171): logits
     ``N x K``;
   * pixel-to-pixel: a supervised pixel contrast over the same N pixels (every other pixel of the same class is a
     positive, all others negatives; SupCon form): logits ``N x N``.

   Peak allocated bytes come from ``torch.profiler``'s memory timeline (CPU; the input ``z`` excluded), next to the
   exact size of one logit matrix. N = B·h·w: 1024 is this benchmark's batch (16 x 8 x 8); the paper's setting
   (16 crops of 512 at stride 8: N = 65536) is given analytically only (one ``N x N`` fp32 matrix is 17 GB).

Nothing here asserts a time; the numbers are ratios measured in one process. Run:
``python bench/bench_mdp.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from rayseg.config import load_config
from rayseg.data import collate_skip_bad
from rayseg.methods import MDP, Supervised
from rayseg.methods.mdp import CrossClassSparseCoding, PixelPrototypeContrast, top_k_other_prototypes

BATCH, WARMUP, DIM, K_TOTAL = 16, 2, 128, 342


# ------------------------------------------------------------------------------------------------ throughput


def _config(extra: list[str]):
    return load_config(None, ["method=mdp", "mdp.datasets=[synthetic:A, synthetic:B]", "data.num_train=64",
                              "data.image_size=64", "data.crop_size=64", "model.backbone=resnet18",
                              "model.head=fcn", "model.output_stride=8", "model.channels=64",
                              f"train.batch_size={BATCH}", *extra])


def _batches(n: int) -> list[dict]:
    cfg = _config([])
    train_set = MDP.train_dataset(cfg)
    torch.manual_seed(0)
    loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, drop_last=True, collate_fn=collate_skip_bad)
    out = []
    while len(out) < n:
        for batch in loader:
            batch.pop("skipped", None)
            out.append(batch)
            if len(out) == n:
                break
    return out


def _build(variant: str):
    cfg = _config(["mdp.region_mix_fraction=0", "mdp.class_mix_fraction=0"] if variant == "mdp-nomix" else [])
    train_set = MDP.train_dataset(cfg)
    torch.manual_seed(0)
    method = (Supervised if variant == "supervised" else MDP).from_config(cfg, train_set)
    return method.train()


class Stepper:
    """One variant's method and SGD optimizer; ``step(batch)`` runs forward, backward and the update, timed."""

    def __init__(self, variant: str):
        self.method = _build(variant)
        self.optimizer = torch.optim.SGD(self.method.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(self, batch: dict) -> float:
        start = time.perf_counter()
        losses = self.method(batch)
        self.optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        self.optimizer.step()
        return time.perf_counter() - start


def paired_step_times(variants: tuple[str, ...], batches: list[dict], rounds: int) -> dict[str, list[float]]:
    """Seconds per step of every variant, interleaved step by step (the order rotates every round) so that the
    drift of a shared machine hits all variants alike; WARMUP rounds first, not recorded."""
    steppers = {v: Stepper(v) for v in variants}
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(WARMUP + rounds):
        batch = batches[r % len(batches)]
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            t = steppers[v].step(batch)
            if r >= WARMUP:
                times[v].append(t)
        if r >= WARMUP:
            print(f"[bench_mdp] round {r - WARMUP + 1}/{rounds} "
                  + " ".join(f"{v} {times[v][-1]:.2f}s" for v in variants), flush=True)
    return times


# ---------------------------------------------------------------------------------------------------- memory


def pixel_to_pixel_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised pixel-to-pixel contrast over the N pixels of a batch (the baseline MDP replaces)::

        L(i) = −1/|P(i)| Σ_{p ∈ P(i)} log( exp(z_i·z_p/τ) / Σ_{a ≠ i} exp(z_i·z_a/τ) ),  P(i) = {p ≠ i : y_p = y_i}

    averaged over the pixels with at least one positive. Its logits are ``N x N``.
    """
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    logits = (z @ z.t() / temperature).masked_fill(eye, float("-inf"))
    log_p = F.log_softmax(logits, dim=1)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(1)
    per_pixel = -(log_p.masked_fill(~positive, 0.0)).sum(1) / count.clamp_min(1)
    return per_pixel[count > 0].mean()


def mdp_loss(z: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, class_dataset: torch.Tensor,
             beta: float = 0.1, temperature: float = 0.1, k: int = 5) -> torch.Tensor:
    """``L_p2p + β L_csc`` exactly as ``MDP.forward`` computes it (logits ``N x K``)."""
    available = torch.ones(prototypes.shape[0], dtype=torch.bool)
    similarity = z @ prototypes.t()
    index, valid = top_k_other_prototypes(similarity, labels, available, k, class_dataset)
    return (PixelPrototypeContrast(temperature)(similarity, labels, available)
            + beta * CrossClassSparseCoding(temperature)(similarity, labels, available, index, valid))


def peak_loss_bytes(loss_fn, n: int) -> int:
    """Peak allocated CPU bytes of ``loss_fn(z, labels)`` forward + backward, beyond the input ``z``."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(n, DIM, generator=g), dim=1).requires_grad_(True)
    labels = torch.randint(0, K_TOTAL, (n,), generator=g)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        loss_fn(z, labels).backward()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = os.path.join(tmp, "timeline.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    return max(sum(s) for s in sizes)


def memory_table(sizes: list[int]) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    prototypes = F.normalize(torch.randn(K_TOTAL, DIM, generator=g), dim=1)
    class_dataset = torch.repeat_interleave(torch.arange(3), torch.tensor([21, 150, 171]))
    rows = []
    for n in sizes:
        mdp = peak_loss_bytes(lambda z, y: mdp_loss(z, y, prototypes, class_dataset), n)
        p2pix = peak_loss_bytes(pixel_to_pixel_loss, n)
        rows.append({"pixels": n, "mdp_logits_bytes": n * K_TOTAL * 4, "p2pix_logits_bytes": n * n * 4,
                     "mdp_peak_bytes": mdp, "p2pix_peak_bytes": p2pix, "ratio": p2pix / mdp})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--rounds", type=int, default=16, help="timed steps per variant (interleaved)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    torch.set_num_threads(2)

    batches = _batches(8)
    variants = ("supervised", "mdp", "mdp-nomix")
    times = paired_step_times(variants, batches, rounds)
    median = {v: statistics.median(t) for v, t in times.items()}
    rate = {v: BATCH / median[v] for v in variants}
    ratio = {v: statistics.median(a / b for a, b in zip(times[v], times["supervised"])) for v in variants}
    overhead = ratio["mdp"] - 1
    print(f"\nthroughput (resnet18 os8, 64 px, batch {BATCH}, {rounds} interleaved steps each, CPU, 2 threads)")
    for v in variants:
        print(f"  {v:<10} {rate[v]:6.2f} img/s (median step {median[v]:.2f}s); "
              f"median per-step time ratio to supervised {ratio[v]:.3f}")
    print(f"  MDP overhead vs supervised: {100 * overhead:+.1f}% (target <= 15%); "
          f"without mixing: {100 * (ratio['mdp-nomix'] - 1):+.1f}%")

    sizes = [256, 1024] if args.quick else [1024, 4096, 8192]
    rows = memory_table(sizes)
    print(f"\nloss memory, forward + backward from z (N x {DIM}), K_total = {K_TOTAL} (MB = 1e6 bytes)")
    print(f"  {'N':>6} {'MDP logits':>11} {'p2pix logits':>13} {'MDP peak':>9} {'p2pix peak':>11} {'ratio':>7}")
    for row in rows:
        print(f"  {row['pixels']:>6} {row['mdp_logits_bytes'] / 1e6:>10.1f}M {row['p2pix_logits_bytes'] / 1e6:>12.1f}M"
              f" {row['mdp_peak_bytes'] / 1e6:>8.1f}M {row['p2pix_peak_bytes'] / 1e6:>10.1f}M {row['ratio']:>6.1f}x")
    n = 16 * 64 * 64
    print(f"  paper scale N = {n}: one logit matrix {n * K_TOTAL * 4 / 1e6:.0f} MB (MDP) vs "
          f"{n * n * 4 / 1e9:.1f} GB (pixel-to-pixel), analytic")

    result = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpus": os.cpu_count(),
              "torch": torch.__version__, "rounds": rounds, "step_seconds": times, "images_per_s": rate,
              "time_ratio_to_supervised": ratio, "overhead": overhead, "memory": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
