"""Training throughput of rayseg's Ray Train engine against a plain single-process PyTorch loop.

What is measured (resnet18-FCN, output stride 16, 64 channels; synthetic domain A, 64x64, crop 64; batch 16 per
worker; SGD; CPU only):

1. plain loop: in this process, ``torch.set_num_threads(2)``, the same model, dataset, ``DataLoader``
   (shuffle, drop_last, ``collate_skip_bad``, no loader workers), optimizer settings and
   ``F.cross_entropy(ignore_index=255)``; images/s over N optimizer steps after 3 warm-up steps, data loading
   included, as the mean of the rates of windows of ``log_every`` steps (the engine's estimator). Plain and
   1-worker engine runs alternate (``--repeats`` times, then a last plain run) and the means are compared,
   because the speed of a shared machine drifts by 10-20% within minutes.
2. engine, 1 worker with 2 CPUs (2 torch threads): ``rayseg.engine.runner.train``; its steady-state images/s is
   ``summary["images_per_s"]`` (the mean of the progress windows after the first, i.e. also N steps).
3. engine, 2 workers with 1 CPU each (DDP over gloo; global batch 32, twice the images so the step count is the
   same): global images/s, compared with 1 worker.

Ray is started once, before the engine runs. The end-to-end wall time of ``train()`` (worker start-up, final
evaluation, checkpoint and export included) is reported separately, because start-up is a fixed cost.

The result is a ratio against a baseline measured in the same run, not an absolute speed, and nothing here
asserts a time. Record the full run in ``bench/RESULTS.md`` with the date and machine.

Run: ``python bench/bench_engine.py [--quick] [--json PATH]`` (``--quick``: tiny sizes, a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local cluster binds to 127.0.0.1

import ray  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from rayseg.config import Config, load_config  # noqa: E402
from rayseg.data import build_segmentation_dataset, collate_skip_bad  # noqa: E402
from rayseg.ignore import IGNORE_INDEX  # noqa: E402
from rayseg.engine.runner import ensure_ray, train  # noqa: E402
from rayseg.methods import METHODS  # noqa: E402
from rayseg.models import build_model  # noqa: E402

BATCH, WARMUP = 16, 3
# images per worker, epochs, log_every (steps per epoch must be a multiple of log_every: equal windows)
FULL = {"num_train": 1024, "num_val": 64, "epochs": 2, "log_every": 8}  # 128 steps, 120 measured
QUICK = {"num_train": 32, "num_val": 16, "epochs": 2, "log_every": 1}  # 4 steps, 3 measured


def make_config(sizes: dict, storage: str, workers: int, cpus_per_worker: int) -> Config:
    return load_config(None, [
        "data.kind=synthetic", "data.domain=A", "data.image_size=64", "data.crop_size=64",
        f"data.num_train={sizes['num_train'] * workers}", f"data.num_val={sizes['num_val']}",
        "model.backbone=resnet18", "model.head=fcn", "model.output_stride=16", "model.channels=64",
        f"train.batch_size={BATCH}", f"train.epochs={sizes['epochs']}", f"train.num_workers={workers}",
        f"train.cpus_per_worker={cpus_per_worker}", f"train.checkpoint_every={sizes['epochs']}",
        f"train.log_every={sizes['log_every']}", f"run.storage={storage}", f"run.name=engine-{workers}w",
    ])


def plain_loop(cfg: Config, steps: int, window: int) -> float:
    """Images/s of a plain PyTorch training loop over ``steps`` steps after WARMUP warm-up steps (the mean of
    the rates of windows of ``window`` steps, as the engine computes ``images_per_s``)."""
    torch.set_num_threads(2)
    torch.manual_seed(cfg.run.seed)
    dataset = build_segmentation_dataset(cfg.data, train=True)
    m = cfg.model
    model = build_model(backbone=m.backbone, head=m.head, num_classes=dataset.num_classes,
                        output_stride=m.output_stride, channels=m.channels, dropout=m.dropout).train()
    o = cfg.optim
    optimizer = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=0,
                        collate_fn=collate_skip_bad)

    def batches():
        while True:  # as many epochs as needed
            yield from loader

    it = batches()
    rates, start = [], time.perf_counter()
    for i in range(WARMUP + steps):
        if i == WARMUP:
            start = time.perf_counter()
        batch = next(it)
        loss = F.cross_entropy(model(batch["image"]), batch["mask"], ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = i + 1 - WARMUP
        if done > 0 and done % window == 0:  # the engine's estimator: the mean of per-window rates
            now = time.perf_counter()
            rates.append(window * BATCH / (now - start))
            start = now
    if not torch.isfinite(loss):
        raise FloatingPointError(f"plain loop: non-finite loss {float(loss)}")
    return sum(rates) / len(rates)


def engine(sizes: dict, storage: str, workers: int, cpus_per_worker: int) -> dict:
    """Steady-state images/s (the engine's own summary) and the wall time of ``train()``."""
    storage = tempfile.mkdtemp(dir=storage)  # a fresh run folder: the same config would otherwise resume
    cfg = make_config(sizes, storage, workers, cpus_per_worker)
    start = time.perf_counter()
    summary = train(cfg, "bench", METHODS[cfg.method])
    wall = time.perf_counter() - start
    rate = summary["images_per_s"]
    train_s = summary["steps"] * BATCH * workers / rate  # all steps at the steady rate
    return {"workers": workers, "cpus_per_worker": cpus_per_worker, "images_per_s": rate, "wall_s": wall,
            "train_s_at_steady_rate": train_s, "steps": summary["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (1-2 min, mostly Ray start-up)")
    parser.add_argument("--json", help="also write the numbers as JSON to this path")
    parser.add_argument("--repeats", type=int, default=2, help="plain/engine alternations (1-worker engine)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    steps_per_epoch = sizes["num_train"] // BATCH
    assert steps_per_epoch % sizes["log_every"] == 0, "windows of unequal length"
    measured = sizes["epochs"] * steps_per_epoch - sizes["log_every"]  # the engine's windows after the first

    with tempfile.TemporaryDirectory(prefix="rayseg-bench-") as storage:  # fresh: nothing resumes
        cfg = make_config(sizes, storage, 1, 2)
        ensure_ray()
        try:
            # Alternate plain / engine runs so that the machine's drift hits both sides alike.
            plains, ones = [], []
            for _ in range(args.repeats):
                plains.append(plain_loop(cfg, measured, sizes["log_every"]))
                ones.append(engine(sizes, storage, workers=1, cpus_per_worker=2))
            plains.append(plain_loop(cfg, measured, sizes["log_every"]))
            two = engine(sizes, storage, workers=2, cpus_per_worker=1)
        finally:
            ray.shutdown()
    base = sum(plains) / len(plains)
    one = dict(ones[-1], images_per_s=sum(o["images_per_s"] for o in ones) / len(ones),
               runs=[o["images_per_s"] for o in ones])
    one["ratio_vs_plain"] = one["images_per_s"] / base
    two["ratio_vs_plain"] = two["images_per_s"] / base
    two["ratio_vs_1_worker"] = two["images_per_s"] / one["images_per_s"]

    torch_v = torch.__version__.split("+")[0]
    lines = [
        f"engine bench (resnet18-FCN OS16, 64x64, batch {BATCH}/worker, CPU, {os.cpu_count()} cores, "
        f"torch {torch_v}, ray {ray.__version__}){' [quick]' if args.quick else ''}",
        f"measured steps per run: {measured} (after {WARMUP} warm-up steps / the first progress window)",
        f"plain PyTorch loop            : {base:.1f} img/s   (runs: {', '.join(f'{p:.1f}' for p in plains)})",
        f"rayseg engine, 1 worker (2 thr): {one['images_per_s']:.1f} img/s   "
        f"(runs: {', '.join(f'{r:.1f}' for r in one['runs'])})   "
        f"ratio {one['ratio_vs_plain']:.2f} (target >= 0.90)",
        f"rayseg engine, 2 workers (1 thr each): {two['images_per_s']:.1f} img/s   "
        f"ratio vs 1 worker {two['ratio_vs_1_worker']:.2f}   vs plain {two['ratio_vs_plain']:.2f}",
        f"engine wall time incl. start-up: 1 worker {one['wall_s']:.1f} s "
        f"(train ~{one['train_s_at_steady_rate']:.0f} s), 2 workers {two['wall_s']:.1f} s "
        f"(train ~{two['train_s_at_steady_rate']:.0f} s; train = all steps at the steady rate)",
    ]
    print("\n" + "\n".join(lines))
    if args.json:
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(), "cpus": os.cpu_count(),
                  "torch": torch.__version__, "ray": ray.__version__, "quick": args.quick, "sizes": sizes,
                  "batch_per_worker": BATCH, "measured_steps": measured,
                  "plain": {"runs": plains, "mean": base}, "engine_1": one, "engine_2": two}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
