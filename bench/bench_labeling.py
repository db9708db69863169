"""PSSL labelling throughput of ``rayseg label`` (Ray Data) against a naive captum loop, pipeline efficiency,
explainer memory and stored bytes per label.

Setup: an ImageFolder of N synthetic classification images (``SyntheticClassification(num_images=N,
image_size=64, seed=0)``), M = 3 ensemble members (resnet18, mobilenet_v3_small, shufflenet_v2_x1_0, random
weights saved to local files: speed does not depend on the weights), SmoothGrad with S noise samples, input 64,
target = the image's class, softmax probability (the explainer's defaults apart from S). CPU only.

1. naive loop: in this process with ``torch.set_num_threads(2)``, image by image: read + decode + resize
   (the pipeline's ``decode_and_resize`` on a one-row batch, normalised as the actor does), then model by model captum
   ``NoiseTunnel(Saliency(softmax∘model)).attribute(x[None], nt_type="smoothgrad", nt_samples=S,
   stdevs=σ_image, target=label, abs=False)`` (``nt_samples_batch_size`` default: all S copies in one pass),
   ``|·|`` summed over channels, then the ensemble math of :mod:`rayseg.labeling.ensemble` (min-max, mean,
   deciles) and the PNG encode of the decile map. Images/s.
2. rayseg end to end: ``label_images(LabelSection(num_actors=A, cpus_per_actor=C, batch_size=8,
   explainer.batch_cap=256))`` into a fresh output folder (the same folder would resume and do nothing), for two
   layouts of the 2 cores: ``1x2`` (one actor with 2 CPUs and 2 torch threads) and ``2x1`` (two actors with 1 CPU
   and 1 thread each). Images/s =
   N / wall time of ``label_images`` measured here (driver-side weight check, Ray Data start-up of the actor
   pool and the Parquet commit included), and the summary's own ``images_per_s``. The time until the driver
   receives the first output batch is recorded by wrapping ``ray.data.Dataset.iter_batches`` in this process:
   an upper bound of the start-up (it contains the first batch's explanation, and Ray Data may hold outputs
   back and hand several over at once). Before the measured jobs, one unmeasured job on one batch of other
   images takes the cold start of Ray's worker processes after ``ray.init`` (its wall time is reported).
   Target: >= 2x the naive loop. Also against what a user without Ray does with the cores: the naive loop in
   ``THREADS`` processes of one thread each, every process over its share of the images (launched as
   subprocesses; wall time from launch to the last exit, imports and member loading included, and the loops' own
   time).
3. pipeline efficiency = pure ensemble forward+backward time / end-to-end time for the same images. Pure:
   ``explain_ensemble(models, images, labels, cfg)`` in this process over the already decoded images in batches
   of 8 (same threads, same settings), with the models the actor uses (``prepare_for_explanation``: BatchNorm
   folded, channels-last). The naive loop keeps the models as loaded, as a user of captum would. Two ways: (a) over
   the whole wall time of (2), fixed costs included;
   (b) marginal: the job is also run on 2N images (the first N are the same images) and the pure time of the N
   extra images is divided by the extra end-to-end time (the slope removes the fixed start-up cost). Target
   >= 0.8.
4. explainer memory: a subprocess loads the members and runs ``explain_ensemble`` on batches of 8; its peak RSS
   (``ru_maxrss``) after 4 and after 16 batches (``--quick``: 2 and 6) must be the same (no growth with the
   number of images). The peak RSS (``VmHWM``) of the Ray actor itself is also read from ``/proc/<pid>/status``
   while the job runs (pid from the GCS actor table of this process's cluster), for the N and the 2N run; left
   out when it is unavailable.
5. stored bytes per label: ``summary["total_bytes"] / total_rows`` (Parquet, all columns) and the mean size of
   the PNG decile maps.

Ray is started once, as ``ensure_ray()`` starts it (local, 127.0.0.1) but with ``max(cores, 2 + 2)`` logical
CPUs (``--ray-cpus``): the explainer actor reserves 2 CPUs and the decode and encode tasks 1 each, and on a
2-core machine a cluster with 2 logical CPUs never schedules the decode task next to the actor: the job hangs
(the tests' cluster has 4 logical CPUs for the same reason). Naive, pure and end-to-end runs alternate
(``--repeats`` rounds) because the speed of a shared machine drifts within minutes; the mean rates are compared.
Nothing here asserts a time. Record the full run in ``bench/RESULTS.md`` with the date and machine.

Run: ``python bench/bench_labeling.py [--quick] [--images N] [--layouts 1x2 2x1] [--json PATH] [--repeats R]``
(``--quick``: N=16, S=4; ``--images``: another N, e.g. 512 to see how the fixed start-up of a job is amortised;
``--layouts``: only these actor layouts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local cluster binds to 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_labeling.py` from the repository root
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from rayseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from rayseg.labeling import shards  # noqa: E402
from rayseg.labeling.ensemble import deciles, ensemble_mean  # noqa: E402
from rayseg.config import ExplainerSection, LabelSection  # noqa: E402
from rayseg.labeling.explainers import explain_ensemble, prepare_for_explanation  # noqa: E402
from rayseg.labeling.members import Member, check_members, load_members  # noqa: E402

ARCHS = ("resnet18", "mobilenet_v3_small", "shufflenet_v2_x1_0")
SIZE, BATCH, BATCH_CAP, THREADS = 64, 8, 256, 2
LAYOUTS = {"1x2": (1, 2), "2x1": (2, 1)}  # explainer actors x CPUs (= torch threads) per actor
GEOMETRY = LabelSection().geometry  # the label section's default, as rayseg end to end uses it
FULL = {"num_images": 128, "samples": 16}
QUICK = {"num_images": 16, "samples": 4}
MEMORY_BATCHES = {"full": (4, 16), "quick": (2, 6)}  # explain_ensemble calls before each peak-RSS reading


# --------------------------------------------------------------------------------------------------- setup


def make_members(folder: Path, num_classes: int) -> list[Member]:
    from rayseg.models import build_classifier

    specs = []
    for i, arch in enumerate(ARCHS):
        torch.manual_seed(1000 + i)
        path = folder / f"{arch}.pt"
        torch.save(build_classifier(arch, num_classes).state_dict(), path)
        specs.append((arch, str(path)))
    return check_members(specs, num_classes)


def decoded(images: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(ids, normalised images [N, 3, SIZE, SIZE], labels [N]) exactly as the pipeline's decode stage makes them."""
    from rayseg.labeling.pipeline import decode_and_resize, list_images

    ids, class_of = list_images(images)
    out = decode_and_resize({"id": ids, "shard": [0] * len(ids), "class_index": [class_of[i] for i in ids]},
                            str(images), SIZE, GEOMETRY)
    assert all(s == "ok" for s in out["status"]), out["status"]
    return ids, normalised(out["image"]), torch.from_numpy(out["class_index"])


def normalised(images) -> torch.Tensor:
    """uint8 ``[N, 3, S, S]`` from the decode stage, ImageNet-normalised as the explainer actor does it."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (torch.from_numpy(images).float() / 255.0 - mean) / std


# --------------------------------------------------------------------------------------------------- 1. naive


def naive_loop(models: list, images: Path, cfg: ExplainerSection, part: tuple[int, int] = (0, 1),
               threads: int = THREADS) -> dict:
    """Images/s of the per-image, per-model captum loop (decode and PNG encode included) over the images
    ``part = (k, P)`` takes (every P-th from the k-th), with ``threads`` torch threads."""
    from captum.attr import NoiseTunnel, Saliency

    from rayseg.labeling.pipeline import decode_and_resize, list_images

    torch.set_num_threads(threads)
    ids, class_of = list_images(images)
    ids = ids[part[0]::part[1]]
    tunnels = [NoiseTunnel(Saliency(lambda x, m=m: m(x).softmax(dim=1))) for m in models]
    png_bytes = 0
    start = time.perf_counter()
    for rel in ids:
        one = decode_and_resize({"id": [rel], "shard": [0], "class_index": [class_of[rel]]}, str(images), SIZE,
                                GEOMETRY)
        x = normalised(one["image"])
        label = int(one["class_index"][0])
        sigma = cfg.noise_level * float(x.max() - x.min())
        maps = []
        for nt in tunnels:
            attr = nt.attribute(x, nt_type="smoothgrad", nt_samples=cfg.samples, stdevs=sigma, target=label,
                                abs=False)
            maps.append(attr.abs().sum(dim=1))  # [1, H, W]
        dec = deciles(ensemble_mean(torch.stack(maps)))[0]
        png_bytes += len(shards.encode_deciles(dec.numpy()))
    seconds = time.perf_counter() - start
    return {"images": len(ids), "seconds": seconds, "images_per_s": len(ids) / seconds}


def naive_part(specs_json: str, num_classes: int, samples: int, images: str, part: str) -> None:
    """Subprocess body of :func:`naive_processes`: the naive loop over part ``k/P`` of the images, one thread,
    the members as loaded; prints its JSON."""
    specs = [Member(**s) for s in json.loads(specs_json)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = load_members(specs, num_classes)
    k, p = (int(v) for v in part.split("/"))
    print(json.dumps(naive_loop(models, Path(images), ExplainerSection(samples=samples), (k, p), threads=1)))


def naive_processes(specs: list[Member], images: Path, num_classes: int, samples: int, processes: int) -> dict:
    """What a user without Ray does with P cores: the naive loop in P processes of one thread, each over every
    P-th image. ``wall_s``: from the launch to the last exit (each process's imports and member loading included,
    as rayseg's end-to-end wall includes its actors' start); ``compute_s``: the slowest process's loop alone."""
    specs_json = json.dumps([dataclasses.asdict(s) for s in specs])
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--naive-part", specs_json, str(num_classes), str(samples),
                               str(images), f"{k}/{processes}"], stdout=subprocess.PIPE, text=True, cwd=str(ROOT))
             for k in range(processes)]
    outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    wall = time.perf_counter() - start
    if any(proc.returncode for proc in procs):
        raise RuntimeError("a naive-loop process failed")
    count, compute = sum(o["images"] for o in outs), max(o["seconds"] for o in outs)
    return {"processes": processes, "images": count, "wall_s": wall, "images_per_s": count / wall,
            "compute_s": compute, "compute_images_per_s": count / compute}


# --------------------------------------------------------------------------------------------------- 3. pure


def pure_ensemble(models: list, x: torch.Tensor, labels: torch.Tensor, cfg: ExplainerSection) -> list[float]:
    """Seconds of ``explain_ensemble`` per batch of BATCH already decoded images (this process, THREADS threads)."""
    torch.set_num_threads(THREADS)
    times = []
    for start in range(0, len(x), BATCH):
        t0 = time.perf_counter()
        explain_ensemble(models, x[start:start + BATCH], labels[start:start + BATCH], cfg)
        times.append(time.perf_counter() - t0)
    return times


# --------------------------------------------------------------------------------------------------- 2. end to end


class FirstOutput:
    """Wraps ``ray.data.Dataset.iter_batches`` (driver side) to record when each output batch arrives."""

    def __init__(self):
        import ray.data

        self.arrivals: list[tuple[float, int]] = []
        self._cls = ray.data.Dataset
        self._orig = self._cls.iter_batches
        arrivals, orig = self.arrivals, self._orig

        def iter_batches(ds, *args, **kwargs):
            for batch in orig(ds, *args, **kwargs):
                arrivals.append((time.perf_counter(), len(next(iter(batch.values())))))
                yield batch

        self._cls.iter_batches = iter_batches

    def close(self):
        self._cls.iter_batches = self._orig


class ActorPeakRSS(threading.Thread):
    """Polls the GCS actor table for the ExplainActor's pid, then its ``VmHWM`` (peak RSS) in ``/proc`` until it
    ends."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.pid: int | None = None
        self.peak_kb = 0
        self.error = ""

    def run(self):
        # The GCS actor table (a private API) works without the dashboard, which the local cluster runs without.
        from ray._private.state import state

        while not self.stop.is_set():
            if self.pid is None:
                try:
                    for a in state.actor_table(None).values():
                        explainer = "ExplainActor" in str(a.get("ActorClassName"))
                        if explainer and a.get("State") == "ALIVE" and a.get("Pid"):
                            self.pid = int(a["Pid"])
                except Exception as exc:  # noqa: BLE001 - optional measurement
                    self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.stop.wait(1.0)
                continue
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            except OSError:
                return  # the actor has exited
            self.stop.wait(0.25)


def end_to_end(specs: list[Member], images: Path, num_classes: int, cfg: ExplainerSection, out_root: Path,
               measure_actor: bool, layout: str = "1x2") -> dict:
    from rayseg.commands.label import label_images
    from rayseg.config import LabelSection

    output = Path(tempfile.mkdtemp(prefix="labels-", dir=out_root))  # fresh: the same folder would resume
    job = LabelSection(images=str(images), output=str(output), members=[f"{m.arch}:{m.weights}" for m in specs],
                       num_classes=num_classes, explainer=cfg, input_size=SIZE, batch_size=BATCH,
                       num_actors=LAYOUTS[layout][0], cpus_per_actor=LAYOUTS[layout][1])

    probe = FirstOutput()
    watcher = ActorPeakRSS() if measure_actor else None
    if watcher:
        watcher.start()
    start = time.perf_counter()
    try:
        summary = label_images(job)
    finally:
        wall = time.perf_counter() - start
        probe.close()
        if watcher:
            watcher.stop.set()
            watcher.join(timeout=5)
    n = summary["new_images"]
    if n != len(list(images.rglob("*.png"))) or summary["errors"]:
        raise RuntimeError(f"labelling job did not label every image: {summary}")
    first = probe.arrivals[0][0] - start if probe.arrivals else float("nan")
    table = shards.read_labels(summary["version_dir"], columns=["deciles_png"])
    png = [len(b) for b in table.column("deciles_png").to_pylist()]
    result = {"images": n, "wall_s": wall, "images_per_s": n / wall, "summary_images_per_s": summary["images_per_s"],
              "first_output_s": first, "total_bytes": summary["total_bytes"], "total_rows": summary["total_rows"],
              "bytes_per_label": summary["total_bytes"] / summary["total_rows"],
              "png_bytes_per_label": sum(png) / len(png)}
    if watcher:
        result["actor_peak_rss_mb"] = watcher.peak_kb / 1024 if watcher.peak_kb else None
        if not watcher.peak_kb:
            result["actor_rss_error"] = watcher.error or "actor pid not found"
    return result


# --------------------------------------------------------------------------------------------------- 4. memory


def memory_probe(specs_json: str, num_classes: int, samples: int, batches: tuple[int, ...]) -> None:
    """Subprocess body: peak RSS (MB) after each count in ``batches`` of explain_ensemble calls; prints JSON."""
    torch.set_num_threads(THREADS)
    specs = [Member(**s) for s in json.loads(specs_json)]
    cfg = ExplainerSection(samples=samples, batch_cap=BATCH_CAP)
    models = [prepare_for_explanation(m, cfg) for m in load_members(specs, num_classes)]
    gen = torch.Generator().manual_seed(0)
    peaks, done = {}, 0
    for target in sorted(batches):
        while done < target:
            x = torch.randn((BATCH, 3, SIZE, SIZE), generator=gen)
            labels = torch.randint(0, num_classes, (BATCH,), generator=gen)
            explain_ensemble(models, x, labels, cfg)
            done += 1
        peaks[target] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(peaks))


def explainer_memory(specs: list[Member], num_classes: int, samples: int, batches: tuple[int, ...]
                      ) -> dict[int, float]:
    specs_json = json.dumps([dataclasses.asdict(s) for s in specs])
    out = subprocess.run([sys.executable, __file__, "--memory-probe", specs_json, str(num_classes), str(samples),
                          ",".join(map(str, batches))], capture_output=True, text=True, check=True, cwd=str(ROOT))
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


# --------------------------------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(f"[bench_labeling {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_ray(num_cpus: int) -> None:
    """``ensure_ray()``'s local cluster (bound to 127.0.0.1), with ``num_cpus`` logical CPUs; ``ensure_ray()`` is
    then a no-op."""
    import logging

    import ray

    from rayseg.engine.runner import ensure_ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=num_cpus, logging_level=logging.WARNING, dashboard_host="127.0.0.1",
                 include_dashboard=os.environ.get("RAYSEG_DASHBOARD", "1") != "0")
    ensure_ray()


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (N=16, S=4): a smoke run")
    parser.add_argument("--json", help="also write the numbers as JSON to this path")
    parser.add_argument("--images", type=int, default=0,
                        help="N, the images of the measured jobs (default: 128, --quick: 16); the 2N job doubles it")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS),
                        help="actor layouts to run (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of naive / pure / end-to-end (N and 2N) runs")
    parser.add_argument("--ray-cpus", type=int, default=max(os.cpu_count() or 1, THREADS + 2),
                        help="logical CPUs of the local Ray cluster (>= 2 + 2: the actor's and one per CPU stage)")
    parser.add_argument("--memory-probe", nargs=4, metavar=("SPECS", "K", "S", "BATCHES"), help=argparse.SUPPRESS)
    parser.add_argument("--naive-part", nargs=5, metavar=("SPECS", "K", "S", "IMAGES", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_part:
        specs_json, k, s, images, part = args.naive_part
        naive_part(specs_json, int(k), int(s), images, part)
        return
    if args.memory_probe:
        specs_json, k, s, batches = args.memory_probe
        memory_probe(specs_json, int(k), int(s), tuple(int(b) for b in batches.split(",")))
        return

    sizes = dict(QUICK if args.quick else FULL)
    if args.images:
        sizes["num_images"] = args.images
    n, samples = sizes["num_images"], sizes["samples"]
    mem_batches = MEMORY_BATCHES["quick" if args.quick else "full"]
    cfg = ExplainerSection(samples=samples, batch_cap=BATCH_CAP)
    torch.set_num_threads(THREADS)

    from rayseg.data.synthetic import SyntheticClassification, write_image_folder

    with tempfile.TemporaryDirectory(prefix="rayseg-bench-label-") as tmp:
        tmp = Path(tmp)
        log(f"writing {n} + {2 * n} synthetic images and {len(ARCHS)} member weight files")
        dataset = SyntheticClassification(num_images=n, image_size=SIZE, seed=0)
        num_classes = dataset.num_classes
        images_n, images_2n = tmp / "images", tmp / "images2n"
        write_image_folder(dataset, images_n)
        write_image_folder(SyntheticClassification(num_images=2 * n, image_size=SIZE, seed=0), images_2n)
        images_warm = tmp / "images_warmup"
        write_image_folder(SyntheticClassification(num_images=BATCH, image_size=SIZE, seed=1), images_warm)
        specs = make_members(tmp, num_classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            models = load_members(specs, num_classes)
        prepared = [prepare_for_explanation(m, cfg) for m in models]  # what the explainer actor runs
        _, x2, labels2 = decoded(images_2n)  # pure time per image is taken over these 2N images

        log(f"explainer memory probe (subprocess, {mem_batches} batches of {BATCH})")
        memory = explainer_memory(specs, num_classes, samples, mem_batches)

        log(f"starting Ray ({args.ray_cpus} logical CPUs)")
        start_ray(args.ray_cpus)
        import ray

        naive, naive_p, pure = [], [], []
        e2e_n: dict[str, list[dict]] = {k: [] for k in args.layouts}
        e2e_2n: dict[str, list[dict]] = {k: [] for k in args.layouts}
        try:
            # The first job after ray.init also starts Ray's worker processes (and their imports): a cold cost
            # that would fall on whichever measured job runs first. A one-batch job takes it; reported apart.
            log(f"warm-up: rayseg label on {BATCH} images (not measured)")
            warm = end_to_end(specs, images_warm, num_classes, cfg, tmp, measure_actor=False)
            log(f"  wall {warm['wall_s']:.1f} s")
            for r in range(args.repeats):
                log(f"round {r + 1}/{args.repeats}: naive loop on {n} images")
                naive.append(naive_loop(models, images_n, cfg))
                log(f"  {naive[-1]['images_per_s']:.2f} img/s; the naive loop in {THREADS} one-thread processes")
                naive_p.append(naive_processes(specs, images_n, num_classes, samples, THREADS))
                log(f"  wall {naive_p[-1]['wall_s']:.1f} s; pure explain_ensemble on {2 * n} images")
                pure.append(pure_ensemble(prepared, x2, labels2, cfg))
                log(f"  {sum(pure[-1]):.1f} s")
                for layout in args.layouts:
                    log(f"  rayseg label, layout {layout}, on {n} images")
                    e2e_n[layout].append(end_to_end(specs, images_n, num_classes, cfg, tmp, True, layout))
                    log(f"    wall {e2e_n[layout][-1]['wall_s']:.1f} s; on {2 * n} images")
                    e2e_2n[layout].append(end_to_end(specs, images_2n, num_classes, cfg, tmp, True, layout))
                    log(f"    wall {e2e_2n[layout][-1]['wall_s']:.1f} s")
        finally:
            ray.shutdown()

    naive_rate = mean([r["images_per_s"] for r in naive])
    naive_p_rate = mean([r["images_per_s"] for r in naive_p])
    naive_p_compute = mean([r["compute_images_per_s"] for r in naive_p])
    # pure time per image, from the 2N run (same cost per image for any N images): N images and N extra images
    pure_per_image = mean([sum(t) / len(x2) for t in pure])
    pure_n = pure_per_image * n
    result = {
        "naive": {"runs": [r["images_per_s"] for r in naive], "images_per_s": naive_rate},
        "naive_processes": {"runs": naive_p, "images_per_s": naive_p_rate, "compute_images_per_s": naive_p_compute},
        "pure": {"batch_seconds": pure, "seconds_per_image": pure_per_image, "seconds_n": pure_n},
        "warmup_job": warm, "explainer_memory_mb": memory, "layouts": {},
    }
    torch_v, ray_v = torch.__version__.split("+")[0], ray.__version__
    m_lo, m_hi = (memory[b] for b in mem_batches)
    lines = [
        f"labeling bench (M={len(ARCHS)} members, S={samples} samples, {SIZE}x{SIZE}, N={n} images, CPU "
        f"{os.cpu_count()} cores, torch {torch_v}, ray {ray_v}){' [quick]' if args.quick else ''}",
        f"naive loop (captum NoiseTunnel per image per model): {naive_rate:.2f} img/s   "
        f"(runs: {', '.join(f'{r:.2f}' for r in result['naive']['runs'])})",
        f"naive loop in {THREADS} one-thread processes: {naive_p_rate:.2f} img/s from launch to exit, "
        f"{naive_p_compute:.2f} img/s in the loops alone",
        f"pure ensemble fwd+bwd ({THREADS} threads, one process): {pure_n:.1f} s for {n} images "
        f"({n / pure_n:.2f} img/s, {n / pure_n / naive_rate:.2f}x the naive loop); cold first job after ray.init "
        f"({BATCH} images, not measured): {warm['wall_s']:.1f} s",
    ]
    for layout in args.layouts:
        runs_n, runs_2n = e2e_n[layout], e2e_2n[layout]
        e2e_rate = mean([r["images_per_s"] for r in runs_n])
        wall_n, wall_2n = mean([r["wall_s"] for r in runs_n]), mean([r["wall_s"] for r in runs_2n])
        extra = wall_2n - wall_n
        first = mean([r["first_output_s"] for r in runs_n])
        efficiency = pure_n / wall_n
        marginal = pure_n / extra if extra > 0 else float("nan")
        summ = mean([r["summary_images_per_s"] for r in runs_n])
        rates = ", ".join(f"{r['images_per_s']:.2f}" for r in runs_n)
        last = runs_n[-1]
        result["layouts"][layout] = {
            "end_to_end_n": {"runs": runs_n, "images_per_s": e2e_rate, "wall_s": wall_n,
                             "ratio_vs_naive": e2e_rate / naive_rate,
                             "ratio_vs_naive_processes": e2e_rate / naive_p_rate},
            "end_to_end_2n": {"runs": runs_2n, "wall_s": wall_2n, "images_per_s": 2 * n / wall_2n,
                              "ratio_vs_naive": 2 * n / wall_2n / naive_rate, "efficiency": 2 * pure_n / wall_2n},
            "marginal_images_per_s": n / extra if extra > 0 else float("nan"),
            "efficiency": efficiency, "efficiency_marginal": marginal,
        }
        lines += [
            f"[{layout}: {LAYOUTS[layout][0]} actor(s) x {LAYOUTS[layout][1]} CPU] rayseg label end to end: "
            f"{e2e_rate:.2f} img/s (wall {wall_n:.1f} s, first output after {first:.1f} s; summary {summ:.2f} img/s)"
            f"   ratio {e2e_rate / naive_rate:.2f}x (target >= 2x), {e2e_rate / naive_p_rate:.2f}x the naive loop in "
            f"{THREADS} processes   (runs: {rates})",
            f"  2N={2 * n} images: wall {wall_2n:.1f} s: {2 * n / wall_2n:.2f} img/s end to end, ratio "
            f"{2 * n / wall_2n / naive_rate:.2f}x, efficiency {2 * pure_n / wall_2n:.2f}; {n} extra images in "
            f"{extra:.1f} s "
            f"({n / extra if extra > 0 else float('nan'):.2f} img/s marginal, "
            f"{(n / extra if extra > 0 else float('nan')) / naive_rate:.2f}x)",
            f"  efficiency = pure / end to end: {efficiency:.2f} (marginal {marginal:.2f}) (target >= 0.8)",
        ]
        actor_n = [r.get("actor_peak_rss_mb") for r in runs_n]
        actor_2n = [r.get("actor_peak_rss_mb") for r in runs_2n]
        if all(actor_n) and all(actor_2n):
            lines.append(f"  explainer actor peak RSS (VmHWM): {mean(actor_n):.0f} MB on {n} images, "
                         f"{mean(actor_2n):.0f} MB on {2 * n} images")
        else:
            lines.append(f"  explainer actor peak RSS: not measured ({last.get('actor_rss_error', 'no pid')})")
    last = e2e_n[args.layouts[0]][-1]
    result.update({"bytes_per_label": last["bytes_per_label"], "png_bytes_per_label": last["png_bytes_per_label"]})
    lines += [
        f"explainer memory: {m_lo:.0f} MB after {mem_batches[0]} batches, {m_hi:.0f} MB after "
        f"{mem_batches[1]} batches ({'no growth' if m_hi - m_lo < 0.02 * m_lo else f'grows {m_hi - m_lo:.0f} MB'}"
        f", subprocess ru_maxrss)",
        f"stored bytes per label: {last['bytes_per_label']:,.0f} B (parquet), "
        f"{last['png_bytes_per_label']:,.0f} B PNG deciles",
    ]
    print("\n" + "\n".join(lines))
    if args.json:
        result.update({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.node(), "cpus": os.cpu_count(),
                       "torch": torch.__version__, "ray": ray_v, "quick": args.quick, "sizes": sizes,
                       "members": list(ARCHS), "batch_size": BATCH, "batch_cap": BATCH_CAP, "threads": THREADS,
                       "ray_cpus": args.ray_cpus})
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=float)


if __name__ == "__main__":
    main()
