"""Cost of one training step of each paper configuration (``jobs/configs/paper/``), and what a GPU run needs.

For each training config, in a fresh process (so that the peak memory is that config's own):
the config as shipped, with only the data paths (small trees in the datasets' own layouts, written once by
``tests/native_trees.py``), the batch per worker (``--batch``), random initialisation, no loader workers and no
SyncBatchNorm (CUDA only) changed. The step is exactly the engine's (``rayseg.engine.loop``): the method's own
dataset, ``from_config``, ``parameter_groups`` + optimizer + scheduler, channels_last as configured, bf16 autocast on
CUDA; ``forward -> sum of losses -> backward -> step``. Measured:

- step time: median over ``--steps`` steps after one warm-up step, data loading excluded (reported apart);
- peak memory: the process's peak RSS on CPU (``ru_maxrss``: everything, Python and the data included), the peak
  allocated CUDA memory on GPU;
- FLOPs of one step (``torch.utils.flop_counter``: forward and backward, real FLOPs = 2 x multiply-adds).

Each config is measured at batch 2 and 3 per worker (DeepLabV3's image pooling needs 2 images per BatchNorm); the
difference is the memory of one more image, which gives
the memory at the paper's per-GPU batch (an estimate: CPU fp32 here, bf16 activations on a GPU take less). The GPU
time of a full run is estimated from the FLOPs at an assumed sustained rate per GPU (``--gpu-tflops``, default 75
TFLOP/s: ResNet-50 training in mixed precision runs at roughly 3,000 images/s on one H100, 24.6 GFLOP each; dilated
segmentation networks rarely do better). These are estimates, not measurements; nothing here asserts a time.

Run: ``python bench/bench_paper_configs.py [--configs NAME ...] [--device cpu|cuda] [--json PATH]``. No Ray.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PAPER = REPO / "jobs" / "configs" / "paper"
TRAINING_CONFIGS = ["pssl_pretrain_imagenet.yaml", "mdp_four_datasets.yaml", "pixcon_sr_coco.yaml",
                    "densecl_coco.yaml", "finetune_voc.yaml", "finetune_ade20k.yaml", "finetune_ade20k_ssa.yaml",
                    "finetune_cityscapes.yaml"]
TRAIN_SIZES = [(375, 500), (500, 333), (427, 640), (480, 360), (512, 512), (333, 500), (400, 600), (360, 480)]
# Images per epoch of the paper's datasets (ImageNet-1k train, the 4-dataset union, COCO train2017, VOC train_aug,
# ADE20K train, Cityscapes train_fine).
DATASET_IMAGES = {"pssl_pretrain_imagenet.yaml": 1_281_167,
                  "mdp_four_datasets.yaml": 1_464 + 118_287 + 20_210 + 2_975,
                  "pixcon_sr_coco.yaml": 118_287, "densecl_coco.yaml": 118_287, "finetune_voc.yaml": 10_582,
                  "finetune_ade20k.yaml": 20_210, "finetune_ade20k_ssa.yaml": 20_210, "finetune_cityscapes.yaml": 2_975}


def write_trees(root: Path) -> dict[str, Path]:
    from tests.native_trees import (
        write_ade20k,
        write_cityscapes,
        write_coco_stuff,
        write_imagenet,
        write_labels,
        write_voc_aug,
    )

    trees = {
        "voc": write_voc_aug(root, [0, 15, 255, 20, 7], sizes=[(375, 500)], stripe=24, train_sizes=TRAIN_SIZES),
        "ade20k": write_ade20k(root, [0, 1, 150, 7, 88], sizes=[(512, 683)], stripe=32, train_sizes=TRAIN_SIZES),
        "cityscapes": write_cityscapes(root, [7, 26, 0, 33, 11, 24], sizes=[(512, 1024)], stripe=48,
                                       train_sizes=[(1024, 2048)] * 4),
        "coco_stuff": write_coco_stuff(root, [0, 12, 91, 181, 255], sizes=[(480, 640)], stripe=32,
                                       train_sizes=TRAIN_SIZES),
        "imagenet": write_imagenet(root, {0: 2, 254: 2, 255: 2, 999: 2}, sizes=TRAIN_SIZES),
    }
    trees["pssl_labels"] = root / "labels" / "v-bench"
    write_labels(trees["pssl_labels"], trees["imagenet"], decile_size=(298, 298))
    return trees


def overrides_for(name: str, trees: dict[str, str], batch: int) -> list[str]:
    common = [f"train.batch_size={batch}", "train.num_workers=0", "train.sync_bn=false", "data.loader_workers=0",
              "model.init_weights=", "train.use_gpu=false"]
    paths = {
        "pssl_pretrain_imagenet.yaml": [f"pssl.labels={trees['pssl_labels']}", f"pssl.images={trees['imagenet']}"],
        "mdp_four_datasets.yaml": [(f"mdp.datasets=[voc:{trees['voc']}, coco_stuff:{trees['coco_stuff']}, "
                                    f"ade20k:{trees['ade20k']}, cityscapes:{trees['cityscapes']}]")],
        "pixcon_sr_coco.yaml": [f"data.root={trees['coco_stuff']}/images/train2017"],
        "densecl_coco.yaml": [f"data.root={trees['coco_stuff']}/images/train2017"],
        "finetune_voc.yaml": [f"data.root={trees['voc']}"],
        "finetune_ade20k.yaml": [f"data.root={trees['ade20k']}"],
        "finetune_ade20k_ssa.yaml": [f"data.root={trees['ade20k']}"],
        "finetune_cityscapes.yaml": [f"data.root={trees['cityscapes']}"],
    }[name]
    return common + paths


def measure_one(name: str, overrides: list[str], device_name: str, steps: int) -> dict:
    """One config in this process: warm-up step, FLOP count, then ``steps`` timed steps."""
    import torch
    import yaml
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from rayseg.config import load_config
    from rayseg.data import collate_skip_bad
    from rayseg.engine.optim import build_optimizer, build_scheduler, parameter_groups
    from rayseg.methods import METHODS

    cfg = load_config(PAPER / name, overrides)
    shipped = yaml.safe_load((PAPER / name).read_text())["train"]
    paper_train = {"batch_per_gpu": shipped["batch_size"], "gpus": shipped["num_workers"], "epochs": shipped["epochs"]}
    device = torch.device(device_name)
    method_cls = METHODS[cfg.method]
    torch.manual_seed(0)
    train_set = method_cls.train_dataset(cfg)
    method = method_cls.from_config(cfg, train_set).to(device)
    if cfg.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(parameter_groups(method, cfg.optim), cfg.optim)
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_skip_bad)
    scheduler = build_scheduler(optimizer, cfg.optim, 10 * len(loader), len(loader))
    amp = device.type == "cuda" and cfg.train.amp

    def batches():
        while True:
            yield from loader

    def step(batch, flops: FlopCounterMode | None = None) -> float:
        batch = {k: (v.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                     if cfg.train.channels_last and isinstance(v, torch.Tensor) and v.dim() == 4
                     else v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with flops if flops is not None else contextlib.nullcontext():
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                loss = sum(method(batch).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    method.train()
    stream = batches()
    step(next(stream))  # warm-up: allocations, oneDNN/cuDNN algorithm choice
    counter = FlopCounterMode(display=False)
    step(next(stream), counter)
    times, data_times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(stream)
        data_times.append(time.perf_counter() - start)
        times.append(step(batch))
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"config": name, "batch": cfg.train.batch_size, "device": device_name,
            "step_s": statistics.median(times), "data_s": statistics.median(data_times),
            "peak_bytes": int(peak), "flops_per_step": int(counter.get_total_flops()),
            "params": sum(p.numel() for p in method.parameters() if p.requires_grad),
            **{f"paper_{key}": value for key, value in paper_train.items()}}


def gpu_estimate(b2: dict, b3: dict, gpu_tflops: float) -> dict:
    """Memory at the paper's per-GPU batch (linear in the batch, from batches 2 and 3) and the GPU-hours of the full
    schedule."""
    per_image = max(0, b3["peak_bytes"] - b2["peak_bytes"])
    fixed = b2["peak_bytes"] - 2 * per_image
    batch = b2["paper_batch_per_gpu"]
    flops_per_image = b2["flops_per_step"] / b2["batch"]
    total = flops_per_image * DATASET_IMAGES[b2["config"]] * b2["paper_epochs"]
    return {"memory_per_image_bytes": per_image, "memory_at_paper_batch_bytes": fixed + per_image * batch,
            "flops_per_image": flops_per_image, "gpu_hours": total / (gpu_tflops * 1e12) / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="*", default=TRAINING_CONFIGS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-tflops", type=float, default=75.0)
    parser.add_argument("--json", default="")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child: NAME
    parser.add_argument("--overrides", default="", help=argparse.SUPPRESS)  # child: JSON list
    args = parser.parse_args()

    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(measure_one(args.one, json.loads(args.overrides), args.device, args.steps)))
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="rs-paper-bench-") as tmp:
        trees = {k: str(v) for k, v in write_trees(Path(tmp)).items()}
        for name in args.configs:
            row = {}
            for batch in (2, 3):
                child = subprocess.run(
                    [sys.executable, __file__, "--one", name, "--overrides", json.dumps(overrides_for(name, trees,
                                                                                                      batch)),
                     "--device", args.device, "--steps", str(args.steps), "--threads", str(args.threads)],
                    capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
                if child.returncode:
                    sys.exit(f"error: {name} batch {batch} failed:\n{child.stderr[-3000:]}")
                row[batch] = json.loads(child.stdout.strip().splitlines()[-1])
            row["gpu"] = gpu_estimate(row[2], row[3], args.gpu_tflops)
            results.append(row)
            b2, gpu = row[2], row["gpu"]
            print(f"{name:28s} batch 2: {b2['step_s']:6.2f} s/step (data {b2['data_s']:.2f} s), peak "
                  f"{b2['peak_bytes'] / 2**30:5.2f} GiB, {b2['flops_per_step'] / 1e12:6.2f} TFLOP/step, "
                  f"{b2['flops_per_step'] / b2['step_s'] / 1e9:5.0f} GFLOP/s | +1 image {gpu['memory_per_image_bytes'] / 2**30:.2f} GiB, "
                  f"at the paper batch {b2['paper_batch_per_gpu']}: {gpu['memory_at_paper_batch_bytes'] / 2**30:.1f} "
                  f"GiB, ~{gpu['gpu_hours']:.0f} GPU-h", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                               "cpus": os.cpu_count(), "threads": args.threads,
                                               "gpu_tflops_assumed": args.gpu_tflops, "results": results}, indent=1))


if __name__ == "__main__":
    main()
