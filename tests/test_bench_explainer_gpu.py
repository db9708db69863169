"""The Ray-free GPU explainer benchmark runs on CPU at toy size (it is run for real on a lent GPU machine)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_explainer_gpu as bench  # noqa: E402


def test_every_variant_runs_and_rayseg_computes_the_bare_loops_maps(tmp_path):
    out = bench.main(["--toy", "--device", "cpu", "--json", str(tmp_path / "out.json")])
    assert set(out["images_per_s"]) == set(bench.VARIANTS) and all(r > 0 for r in out["images_per_s"].values())
    assert set(out["ratios"]) == {"rayseg_vs_bare", "rayseg_vs_naive", "rayseg_vs_best_captum"}
    assert out["max_rel_diff"] < 1e-5  # the same noise, the same maps: the ceiling computes what rayseg computes
    assert out["flops_per_image"] > 0 and out["roofline_tflops"] > 0
    assert json.loads((tmp_path / "out.json").read_text())["archs"] == list(bench.TOY_ENSEMBLE)


def test_the_script_imports_no_ray():  # the GPU machine has torch and torchvision but no Ray
    import subprocess

    bench_dir = Path(bench.__file__).parent
    code = "import sys, bench_explainer_gpu; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=bench_dir).returncode == 0


def test_flops_per_image_count_every_sample_of_every_member():
    import torch

    setup = bench.Setup(torch.device("cpu"), size=32, images=1, samples=2, chunk=4, compile=False, num_classes=10)
    models = bench.build_members(("resnet18",), setup)
    two = bench.flops_per_image(models, setup)
    assert bench.flops_per_image(models * 2, bench.Setup(**{**setup.__dict__, "samples": 4})) == pytest.approx(4 * two)
