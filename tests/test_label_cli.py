"""`rayseg label`: config checks before Ray, and a run through the CLI on the session cluster."""

import json
import re

import pytest

from rayseg.data.synthetic import SyntheticClassification, write_image_folder
from tests.engine_helpers import run_cli


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("label") / "images"
    write_image_folder(SyntheticClassification(num_images=16, image_size=32, classes=[0, 1]), root)
    return root


@pytest.mark.parametrize("overrides, message", [
    (["label.members=[resnet18:/nonexistent/w.pt]"],
     "error: label.members: ensemble member resnet18: weights file not found: /nonexistent/w.pt"),
    (["label.members=[]"], "error: label.members: at least one ensemble member"),
    (["label.images=/nonexistent"], "error: label.images: folder not found: /nonexistent"),
])
def test_label_config_errors_exit_2_before_ray(image_folder, tmp_path, overrides, message):
    args = ["label", f"label.images={image_folder}", f"label.output={tmp_path}", *overrides]
    r = run_cli(args, env={"RAY_ADDRESS": "127.0.0.1:1"})  # joining Ray would fail differently
    assert r.returncode == 2
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(message), r.stderr


def test_label_command_writes_shards_and_scores_them(ray_cluster, image_folder, tmp_path):
    args = ["label", "--address", ray_cluster, f"label.images={image_folder}",
            f"label.true_masks={image_folder}_masks", f"label.output={tmp_path}", "label.members=[resnet18]",
            "label.allow_random_weights=true", "label.explainer.samples=2", "label.input_size=32", "label.shard_size=8",
            "label.num_actors=0", "label.cpus_per_actor=2", "label.cpus_per_task=0.5"]
    r = run_cli(args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "labelled 16 images, 0 errors" in r.stdout
    assert "1 explainer actor(s) x 2 CPUs" in r.stdout  # num_actors 0: (4 - 0.5) // 2 on the 4-CPU test cluster
    progress = [line for line in r.stdout.splitlines() if " committed: " in line]  # not a terminal: still one a shard
    assert [re.sub(r"shard \d", "shard N", line.split(" images/s")[0].rsplit(",", 1)[0]) for line in progress] == [
        "[rayseg] shard N committed: 1/2 shards, 8/16 images", "[rayseg] shard N committed: 2/2 shards, 16/16 images"]
    (version_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    logged = (version_dir / "log.txt").read_text()  # the label folder keeps what the job printed
    assert all(line in logged for line in progress) and "labelled 16 images, 0 errors" in logged
    summary = json.loads((version_dir / "summary.json").read_text())
    assert summary["total_rows"] == 16 and summary["shards"] == 2
    assert 0.0 <= summary["iou_ensemble"] <= 1.0
    again = run_cli(args)
    assert again.returncode == 0 and "shards 0 done, 2 skipped of 2" in again.stdout
    assert (version_dir / "log.txt").read_text() == logged

    png = tmp_path / "grid.png"
    shown = run_cli(["show-labels", "--labels", str(version_dir), "--images", str(image_folder), "--out", str(png),
                     "--count", "3"])
    assert shown.returncode == 0, shown.stderr[-2000:]
    from PIL import Image

    with Image.open(png) as grid:
        assert grid.format == "PNG" and grid.height > 300 and grid.width > 300


class ClusterStarted(Exception):
    """Raised by the stand-in for ``ray.init``: the test ends where the cluster would start."""


@pytest.mark.parametrize("dashboard_env, dashboard", [(None, False), ("1", True)])
def test_label_command_starts_its_local_cluster_without_dashboard(image_folder, tmp_path, monkeypatch,
                                                                 dashboard_env, dashboard):
    """`rayseg label` runs no Ray Train (whose placement-group cleaner needs the dashboard), so the local cluster it
    starts has none (seconds less start-up on 2 cores, bench/RESULTS.md); RAYSEG_DASHBOARD=1 brings it back."""
    import ray

    from rayseg.cli import build_parser
    from rayseg.commands import label

    seen = {}

    def init(**kwargs):
        seen.update(kwargs)
        raise ClusterStarted

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if dashboard_env is None:
        monkeypatch.delenv("RAYSEG_DASHBOARD", raising=False)
    else:
        monkeypatch.setenv("RAYSEG_DASHBOARD", dashboard_env)
    args = build_parser().parse_args(["label", f"label.images={image_folder}", f"label.output={tmp_path}",
                                      "label.members=[resnet18]", "label.allow_random_weights=true"])
    with pytest.raises(ClusterStarted):
        label.run(args)
    assert seen["address"] == "local" and seen["include_dashboard"] is dashboard
    # the workers are told the state API's address only where a dashboard serves it
    assert (seen["runtime_env"] is not None) is dashboard
