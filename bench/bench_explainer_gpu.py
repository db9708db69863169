"""Explainer throughput on one device, without Ray: the paper's 15-member SmoothGrad ensemble at 224 px.

Four ways to compute the same SmoothGrad maps (S noisy copies per image, σ = noise_level · (max x − min x) per
image, gradient of the target's softmax probability, ``|mean gradient|`` summed over channels), same members (random
weights: speed does not depend on them), same images:

1. ``naive``: captum as its tutorial shows it, image by image and model by model:
   ``NoiseTunnel(Saliency(softmax∘model)).attribute(x[None], nt_type="smoothgrad", nt_samples=S, stdevs=σ,
   target=t)``, the models as loaded.
2. ``captum_batched`` / ``captum_batched_prepared``: the competent captum user: a batch of images per call,
   ``nt_samples_batch_size`` = the chunk, one σ for the batch (captum takes one per input tensor), the models as
   loaded / prepared as rayseg prepares them (BatchNorm folded, channels last).
3. ``rayseg``: :func:`rayseg.labeling.explainers.explain_ensemble` over the prepared members (bf16 autocast on
   CUDA, ``label.explainer`` defaults apart from S and the chunk).
4. ``bare``: the ceiling: per model, fixed-shape chunks of noisy copies, one forward (bf16 autocast on CUDA,
   ``torch.compile`` with ``--compile``) and one ``torch.autograd.grad`` each, nothing else. It draws the noise
   as rayseg does, so its maps must equal rayseg's (``max_rel_diff`` in the output, fp32 only).

Printed: images/s of each, the ratios (rayseg vs bare, vs naive, vs the best captum), FLOPs per image (forward +
backward of every sample of every member, counted by ``torch.utils.flop_counter`` in real FLOPs, 2 per
multiply-add) and the achieved TFLOP/s against the device's measured matmul and convolution rooflines, and the
rate of the labelling pipeline's CPU decode stage (ImageNet-like JPEGs), which says how many CPUs feed one
explainer actor. On CUDA also the bf16 vs
fp32 agreement of rayseg's maps: share of the fp32 top-decile pixels that bf16 keeps, and the Spearman rank
correlation. ``--toy`` (2 small members, 32 px, S = 2, 2 images) runs on CPU in seconds (the tests run it).

Run: ``python bench/bench_explainer_gpu.py [--device cuda] [--toy] [--size 224] [--images 8] [--samples 50]
[--chunk 0] [--compile] [--skip naive,captum_batched] [--threads 2] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/bench_explainer_gpu.py` from the repository root
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torchvision  # noqa: E402

from rayseg.config import ExplainerSection  # noqa: E402
from rayseg.labeling.ensemble import deciles, ensemble_mean  # noqa: E402
from rayseg.labeling.explainers import chunk_size, explain_ensemble, prepare_for_explanation  # noqa: E402

# methods.md §3.1: 15 diverse torchvision classifiers (the paper does not list its own)
PAPER_ENSEMBLE = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet161",
                  "vgg16_bn", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b3",
                  "regnet_y_8gf", "convnext_tiny", "vit_b_16")
TOY_ENSEMBLE = ("resnet18", "mobilenet_v3_small")
VARIANTS = ("naive", "captum_batched", "captum_batched_prepared", "rayseg", "bare")


@dataclasses.dataclass
class Setup:
    device: torch.device
    size: int
    images: int
    samples: int
    chunk: int
    compile: bool
    noise_level: float = 0.1
    num_classes: int = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _amp(device: torch.device, enabled: bool = True):
    return torch.autocast("cuda", dtype=torch.bfloat16) if enabled and device.type == "cuda" \
        else contextlib.nullcontext()


def build_members(archs: tuple[str, ...], setup: Setup) -> list[torch.nn.Module]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [torchvision.models.get_model(a, weights=None, num_classes=setup.num_classes).eval().to(setup.device)
                for a in archs]


def bare_loop(models: list, x: torch.Tensor, targets: torch.Tensor, setup: Setup,
              generator: torch.Generator, amp: bool = True) -> torch.Tensor:
    """The ceiling: SmoothGrad maps ``[M, B, H, W]`` with nothing but fixed-shape chunks, forward and input grad
    (the noise drawn as rayseg draws it: one ``randn(S, C, H, W)`` per image, models in order)."""
    b, c, h, w = x.shape
    s = setup.samples
    chunk = min(setup.chunk, b * s)  # the fixed shape: no padding beyond the copies there are
    sigma = setup.noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    maps = []
    for model in models:
        noisy = torch.cat([x[i] + torch.randn((s, c, h, w), generator=generator, device=x.device) * sigma[i]
                           for i in range(b)])
        owner = torch.arange(b, device=x.device).repeat_interleave(s)
        grad_sum = torch.zeros((b, c, h, w), device=x.device)
        for lo in range(0, b * s, chunk):
            part = noisy[lo:lo + chunk]
            n = part.shape[0]
            if n < chunk:  # one shape for every chunk (compiled graphs are shape-specialised)
                part = torch.cat([part, part.new_zeros((chunk - n, c, h, w))])
            part = part.contiguous(memory_format=torch.channels_last).requires_grad_(True)
            with _amp(x.device, amp):
                out = model(part)
            score = out[:n].float().softmax(1).gather(1, targets[owner[lo:lo + n]].view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, part)
            grad_sum.index_add_(0, owner[lo:lo + n], grad[:n].float())
        maps.append((grad_sum / s).abs().sum(1))
    return torch.stack(maps)


def captum_naive(models: list, x: torch.Tensor, targets: torch.Tensor, setup: Setup) -> torch.Tensor:
    from captum.attr import NoiseTunnel, Saliency

    maps = []
    for model in models:
        tunnel = NoiseTunnel(Saliency(lambda inp, m=model: m(inp).softmax(1)))
        per_image = []
        for i in range(len(x)):
            sigma = float(setup.noise_level * (x[i].max() - x[i].min()))
            attr = tunnel.attribute(x[i:i + 1], nt_type="smoothgrad", nt_samples=setup.samples, stdevs=sigma,
                                    target=int(targets[i]), abs=False)
            per_image.append(attr.abs().sum(1)[0])
        maps.append(torch.stack(per_image))
    return torch.stack(maps)


def captum_batched(models: list, x: torch.Tensor, targets: torch.Tensor, setup: Setup) -> torch.Tensor:
    from captum.attr import NoiseTunnel, Saliency

    sigma = float(setup.noise_level * (x.max() - x.min()))  # captum: one σ per input tensor
    per_call = max(1, setup.chunk // setup.samples)  # images per call, so that a chunk holds their copies
    maps = []
    for model in models:
        tunnel = NoiseTunnel(Saliency(lambda inp, m=model: m(inp).float().softmax(1)))
        parts = []
        for lo in range(0, len(x), per_call):
            with _amp(x.device):
                attr = tunnel.attribute(x[lo:lo + per_call], nt_type="smoothgrad", nt_samples=setup.samples,
                                        nt_samples_batch_size=min(setup.chunk, setup.samples), stdevs=sigma,
                                        target=targets[lo:lo + per_call], abs=False)
            parts.append(attr.float().abs().sum(1))
        maps.append(torch.cat(parts))
    return torch.stack(maps)


def flops_per_image(models: list, setup: Setup) -> float:
    """Forward + input-gradient FLOPs of one noisy copy through every member, times S."""
    from torch.utils.flop_counter import FlopCounterMode

    total = 0
    for model in models:
        part = torch.randn((1, 3, setup.size, setup.size), device=setup.device, requires_grad=True)
        with FlopCounterMode(display=False) as counter:
            model(part).softmax(1)[:, 0].sum().backward()  # (autograd.grad trips the counter's module hooks)
        total += counter.get_total_flops()
    return float(total * setup.samples)


def matmul_roofline(device: torch.device) -> float:
    """Measured FLOP/s of a large matmul (bf16 on CUDA, fp32 on CPU): the device's practical ceiling."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn((n, n), device=device, dtype=dtype)
    a @ a
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        a @ a
        reps += 1
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def conv_roofline(device: torch.device) -> float:
    """Measured FLOP/s of a large 3x3 convolution (256 -> 256 channels, 56x56, batch 8; bf16 on CUDA, channels
    last): the ceiling a convolutional member can reach."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch = 64 if device.type == "cuda" else 8
    x = torch.randn((batch, 256, 56, 56), device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device, dtype).to(
        memory_format=torch.channels_last)
    with torch.no_grad():
        conv(x)
        _sync(device)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            conv(x)
            reps += 1
        _sync(device)
    return 2 * batch * 56 * 56 * 256 * 256 * 9 * reps / (time.perf_counter() - start)


def decode_rate(size: int, count: int = 32) -> float:
    """Images/s of the labelling pipeline's CPU decode stage on this process's core (ImageNet-like 500x375 JPEGs of
    ~100 KB to ``size``): how many CPUs per explainer actor keep it fed."""
    import tempfile

    import numpy as np
    from PIL import Image

    from rayseg.labeling.stages import decode_and_resize

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        ids = []
        for i in range(count):
            smooth = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # low-frequency content plus texture
            image = np.asarray(Image.fromarray(smooth).resize((500, 375), Image.BICUBIC), np.int16)
            image = np.clip(image + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(Path(root) / f"{i}.jpg", quality=90)
            ids.append(f"{i}.jpg")
        batch = {"id": ids, "shard": [0] * count, "class_index": [0] * count}
        decode_and_resize(batch, root, size, "crop")
        start = time.perf_counter()
        out = decode_and_resize(batch, root, size, "crop")
        seconds = time.perf_counter() - start
    assert all(s == "ok" for s in out["status"])
    return count / seconds


def interleaved(arms: dict, device: torch.device, rounds: int) -> tuple[dict, dict]:
    """Seconds per call of each arm (the best of ``rounds``, after a warm-up call of each) and its last result. The
    arms take turns within each round, so that a drift of the machine's speed hits them alike."""
    seconds, results = {name: float("inf") for name in arms}, {}
    with torch.enable_grad():
        for name, fn in arms.items():
            print(f"[bench] warm-up: {name}", flush=True)
            results[name] = fn()
        for r in range(rounds):
            for name, fn in arms.items():
                _sync(device)
                start = time.perf_counter()
                results[name] = fn()
                _sync(device)
                seconds[name] = min(seconds[name], time.perf_counter() - start)
            print(f"[bench] round {r + 1}/{rounds}: " + ", ".join(f"{n} {seconds[n]:.2f} s" for n in arms),
                  flush=True)
    return seconds, results


def agreement(fp32: torch.Tensor, other: torch.Tensor) -> dict:
    """Share of the fp32 ensemble's top-decile pixels that ``other`` keeps, and the Spearman rank correlation."""
    a, b = ensemble_mean(fp32.float()), ensemble_mean(other.float())
    top_a, top_b = deciles(a) >= 9, deciles(b) >= 9
    ranks_a = a.flatten(1).argsort(1).argsort(1).float()
    ranks_b = b.flatten(1).argsort(1).argsort(1).float()
    spearman = torch.nn.functional.cosine_similarity(ranks_a - ranks_a.mean(1, keepdim=True),
                                                     ranks_b - ranks_b.mean(1, keepdim=True), dim=1)
    return {"top_decile_agreement": float((top_a & top_b).sum() / top_a.sum()),
            "spearman": float(spearman.mean())}


def run(archs: tuple[str, ...], setup: Setup, skip: set[str], repeats: int) -> dict:
    torch.manual_seed(0)
    models = build_members(archs, setup)
    cfg = ExplainerSection(samples=setup.samples, batch_cap=setup.chunk)
    if not setup.chunk:  # rayseg's own choice for this size and device; the other arms get the same chunk
        setup.chunk = chunk_size(cfg, torch.empty((1, 3, setup.size, setup.size), device=setup.device))
    prepared = [prepare_for_explanation(m, cfg) for m in models]
    if setup.compile:
        compiled = [torch.compile(m, dynamic=False) for m in prepared]
    x = torch.randn((setup.images, 3, setup.size, setup.size), device=setup.device)
    targets = torch.randint(0, setup.num_classes, (setup.images,), device=setup.device)

    def generator() -> torch.Generator:
        return torch.Generator(device=setup.device).manual_seed(0)

    arms = {
        "naive": lambda: captum_naive(models, x, targets, setup),
        "captum_batched": lambda: captum_batched(models, x, targets, setup),
        "captum_batched_prepared": lambda: captum_batched(prepared, x, targets, setup),
        "rayseg": lambda: explain_ensemble(prepared, x, targets, cfg, generator=generator())[0],
        "bare": lambda: bare_loop(compiled if setup.compile else prepared, x, targets, setup, generator()),
    }
    arms = {name: fn for name, fn in arms.items() if name not in skip}
    seconds, maps = interleaved(arms, setup.device, repeats)
    rates = {name: setup.images / s for name, s in seconds.items()}
    flops = flops_per_image(prepared, setup)
    out = {"archs": list(archs), "rayseg_batch_cap": cfg.batch_cap,
           "setup": {**dataclasses.asdict(setup), "device": str(setup.device)},
           "images_per_s": rates, "flops_per_image": flops,
           "achieved_tflops": {k: r * flops / 1e12 for k, r in rates.items()},
           "roofline_tflops": matmul_roofline(setup.device) / 1e12,
           "conv_roofline_tflops": conv_roofline(setup.device) / 1e12,
           "decode_images_per_s_per_cpu": decode_rate(setup.size)}
    if "rayseg" in rates:
        captum = [rates[k] for k in ("captum_batched", "captum_batched_prepared") if k in rates]
        out["ratios"] = {f"rayseg_vs_{k}": rates["rayseg"] / rates[k] for k in ("bare", "naive") if k in rates}
        if captum:
            out["ratios"]["rayseg_vs_best_captum"] = rates["rayseg"] / max(captum)
    if "rayseg" in maps and "bare" in maps and setup.device.type != "cuda":  # the same noise, fp32: the same maps
        ref = maps["bare"].float()
        out["max_rel_diff"] = float((maps["rayseg"].float() - ref).abs().max() / ref.abs().max())
    if setup.device.type == "cuda" and "rayseg" in maps:
        fp32_cfg = dataclasses.replace(cfg, amp=False)
        with torch.enable_grad():
            fp32 = explain_ensemble(prepared, x, targets, fp32_cfg, generator=generator())[0]
        out["bf16_vs_fp32"] = agreement(fp32, maps["rayseg"])
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--toy", action="store_true", help="2 small members, 32 px, S = 2, 2 images (CPU, seconds)")
    p.add_argument("--archs", default="", help="comma-separated torchvision classifiers (default: the paper's 15)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--chunk", type=int, default=0, help="noisy copies per forward/backward (0: what rayseg's "
                   "label.explainer.batch_cap: 0 chooses for this size and device)")
    p.add_argument("--compile", action="store_true", help="torch.compile the bare loop's members")
    p.add_argument("--skip", default="", help=f"comma-separated variants to leave out of {VARIANTS}")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds after the warm-up (best of them)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = tuple(args.archs.split(",")) if args.archs else TOY_ENSEMBLE if args.toy else PAPER_ENSEMBLE
    setup = Setup(torch.device(args.device), 32 if args.toy else args.size, 2 if args.toy else args.images,
                  2 if args.toy else args.samples, 4 if args.toy else args.chunk, args.compile,
                  num_classes=10 if args.toy else 1000)
    out = run(archs, setup, {s for s in args.skip.split(",") if s}, 1 if args.toy else args.repeats)
    out["machine"] = {"node": platform.node(), "cpu": platform.processor(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "gpu": torch.cuda.get_device_name() if setup.device.type == "cuda" else ""}
    for name, r in out["images_per_s"].items():
        print(f"{name:>24}: {r:9.3f} images/s  {out['achieved_tflops'][name]:9.4f} TFLOP/s")
    print(f"FLOPs per image {out['flops_per_image'] / 1e9:.3f} G; roofline: matmul {out['roofline_tflops']:.2f}, "
          f"conv {out['conv_roofline_tflops']:.2f} TFLOP/s; ratios {json.dumps(out.get('ratios', {}))}")
    if "rayseg" in out["images_per_s"]:
        print(f"decode at {setup.size} px: {out['decode_images_per_s_per_cpu']:.0f} images/s per CPU: "
              f"{out['images_per_s']['rayseg'] / out['decode_images_per_s_per_cpu']:.2g} CPUs keep one explainer "
              f"actor fed")
    for key in ("max_rel_diff", "bf16_vs_fp32"):
        if key in out:
            print(f"{key}: {out[key]}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
