"""Ray Tune overhead of `rayseg sweep`: wall time of an N-trial sweep / the sum of its trials' training times.

What is measured: a sweep of N trials (``optim.lr`` grid, objective loss, ASHA off so every trial trains to the
end) on a fresh local Ray cluster with 2 CPUs. Each trial's Train run takes both CPUs (1 worker x 2 CPUs), so the
trials run one after another and nothing overlaps: the sweep's wall time minus the trials' training times is what
Tune adds (the Tuner and its experiment state, starting each trial's driver actor, the driver's imports and its
Tune report queue, the results table and best config, and the wait for the trials' placement groups at the end).

* sweep wall time: ``rayseg.tune.sweep.run_sweep`` from call to return (Ray is started before it, not timed).
* a trial's training time: ``fit_seconds`` of its run folder's ``summary.json``, the wall time of its
  ``TorchTrainer.fit`` (Ray Train's own start-up of the controller and worker, the training, the final
  evaluation, checkpoints and export). The baseline is what the same runs cost without Tune.

Target: ratio <= 1.25 on 2 CPUs. The ratio falls as trials get longer (Tune's cost per trial is fixed), so the
default trials are short but not toy-sized: resnet18-FCN (output stride 16, 64 channels), 64x64, 320 images,
batch 16, 3 epochs (60 steps, ~1 min each on 2 cores). Nothing here asserts a time; record a full run in
``bench/RESULTS.md`` with the date and machine (a shared machine drifts: say how loaded it was).

Run: ``python bench/bench_tune.py [--trials N] [--quick] [--json PATH]`` (``--quick``: tiny trials, a smoke run
whose ratio is dominated by the fixed costs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local cluster binds to 127.0.0.1

import ray  # noqa: E402
import yaml  # noqa: E402

from rayseg.config import load_config  # noqa: E402
from rayseg.tune.space import load_space  # noqa: E402
from rayseg.tune.sweep import run_sweep  # noqa: E402

FULL = {"num_train": 320, "image_size": 64, "channels": 64, "epochs": 3, "batch_size": 16, "log_every": 5}
QUICK = {"num_train": 16, "image_size": 32, "channels": 16, "epochs": 2, "batch_size": 4, "log_every": 2}
LRS = [0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help=f"trials in the sweep (at most {len(LRS)})")
    parser.add_argument("--quick", action="store_true", help="tiny trials: a smoke run")
    parser.add_argument("--json", help="also write the numbers as JSON to this path")
    args = parser.parse_args()
    if not 1 <= args.trials <= len(LRS):
        parser.error(f"--trials: 1 to {len(LRS)}")
    s = QUICK if args.quick else FULL

    with tempfile.TemporaryDirectory(prefix="rayseg-bench-tune-") as tmp:  # fresh: nothing resumes
        cfg = load_config(None, [
            f"run.storage={tmp}/runs", "data.kind=synthetic", "data.domain=A", f"data.num_train={s['num_train']}",
            "data.num_val=16", f"data.image_size={s['image_size']}", f"data.crop_size={s['image_size']}",
            "model.backbone=resnet18", "model.output_stride=16", f"model.channels={s['channels']}",
            f"train.epochs={s['epochs']}", f"train.batch_size={s['batch_size']}", f"train.log_every={s['log_every']}",
            "train.num_workers=1", "train.cpus_per_worker=2", f"train.checkpoint_every={s['epochs']}",
        ])
        space_file = Path(tmp) / "space.yaml"
        space_file.write_text(yaml.safe_dump({"objective": "loss", "asha": None,
                                              "params": {"optim.lr": {"grid": LRS[:args.trials]}}}))
        space = load_space(space_file, cfg)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING")
        try:
            start = time.perf_counter()
            out = run_sweep(cfg, space)
            wall = time.perf_counter() - start
        finally:
            ray.shutdown()
        sweep_dir = Path(out["sweep_dir"])
        fits = []
        for row in out["rows"]:
            run_dir = sweep_dir.parent / f"{sweep_dir.name}-{row['trial_id']}"
            fits.append(json.loads((run_dir / "summary.json").read_text())["fit_seconds"])

    total_fit = sum(fits)
    ratio = wall / total_fit
    load = os.getloadavg()
    lines = [
        f"tune bench: {args.trials} trials one at a time on 2 CPUs (resnet18-FCN OS16 {s['channels']} ch, "
        f"{s['image_size']}x{s['image_size']}, {s['num_train']} images, {s['epochs']} epochs, batch "
        f"{s['batch_size']}; {os.cpu_count()} cores, ray {ray.__version__}){' [quick]' if args.quick else ''}",
        f"trials' TorchTrainer.fit: {', '.join(f'{f:.1f}' for f in fits)} s (sum {total_fit:.1f} s)",
        f"sweep wall time: {wall:.1f} s; Tune's share {wall - total_fit:.1f} s "
        f"({(wall - total_fit) / args.trials:.1f} s per trial)",
        f"Tune overhead ratio: {ratio:.3f} (target <= 1.25)",
        f"load average at the end (1/5/15 min): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    ]
    print("\n" + "\n".join(lines))
    if args.json:
        result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(), "cpus": os.cpu_count(),
                  "ray": ray.__version__, "quick": args.quick, "sizes": s, "trials": args.trials,
                  "fit_seconds": fits, "sweep_wall_s": wall, "ratio": ratio, "loadavg": load}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
