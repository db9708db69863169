"""Every shipped config parses and validates (paths that only exist on a real machine are overridden)."""

from pathlib import Path

import pytest
import torch
import yaml

from rayseg.config import Config, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "jobs" / "configs").glob("*.yaml"))


def _dotted(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_is_valid_and_keeps_every_value_it_sets(path, tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    text = path.read_text()
    overrides = {}
    if "kind: voc" in text:
        overrides["data.root"] = str(tmp_path)
    if "init_weights: rayseg_runs" in text:
        overrides["model.init_weights"] = str(weights)
    loaded = load_config(path, [f"{k}={v}" for k, v in overrides.items()]).to_dict()
    for key, value in _dotted(yaml.safe_load(text)):
        node = loaded
        for part in key.split("."):
            node = node[part]
        assert node == overrides.get(key, value), key


def test_the_shipped_configs():
    assert [p.name for p in CONFIGS] == [
        "finetune_synthetic.yaml", "finetune_voc.yaml", "label.yaml", "pretrain_densecl.yaml", "pretrain_mdp.yaml",
        "pretrain_pixcon.yaml", "pretrain_supervised.yaml"]


CLUSTER = Path(__file__).resolve().parents[1] / "jobs" / "cluster"


def test_autoscaler_yaml_keeps_work_off_the_head_and_scales_gpus_from_zero():
    cluster = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"]["CPU"] == 0
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["gpu_worker"]["min_workers"] == 0 < types["gpu_worker"]["max_workers"]


def test_rayjob_entrypoint_runs_a_shipped_job_with_a_valid_config(tmp_path):
    import shlex

    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    root = CLUSTER.parents[1]
    assert argv[0] == "python" and (root / argv[1]).is_file()
    config = root / argv[argv.index("--config") + 1]
    overrides = argv[argv.index("--config") + 2:]
    cluster_only = ("pssl.labels", "pssl.images")  # folders on the cluster's shared filesystem
    assert {a.split("=", 1)[0] for a in overrides} >= set(cluster_only)
    for key in cluster_only:
        (tmp_path / key).mkdir()
    overrides = [f"{a.split('=', 1)[0]}={tmp_path / a.split('=', 1)[0]}" if a.startswith(cluster_only) else a
                 for a in overrides]
    cfg = load_config(config, overrides)
    assert cfg.method == "pssl" and cfg.train.use_gpu and cfg.train.num_workers == 8
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"


# ------------------------------------------------------------------------------------------ the paper configs

PAPER = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "paper"


@pytest.fixture(scope="module")
def paper_paths(tmp_path_factory):
    """Every path the paper configs name, as small trees in their layouts (the configs check them on load)."""
    from tests.native_trees import write_ade20k, write_cityscapes, write_coco_stuff, write_imagenet, write_voc_aug

    root = tmp_path_factory.mktemp("paper")
    weights = root / "resnet50.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, weights)
    labels = root / "labels" / "v1"
    labels.mkdir(parents=True)
    return {"voc": write_voc_aug(root, [0, 1]), "ade20k": write_ade20k(root, [1]),
            "cityscapes": write_cityscapes(root, [7]), "coco_stuff": write_coco_stuff(root, [0]),
            "imagenet": write_imagenet(root, {0: 1}, num_classes=2), "weights": weights, "labels": labels}


def load_paper(name: str, paths: dict) -> Config:
    text = (PAPER / name).read_text()
    overrides = [f"model.init_weights={paths['weights']}"] if "init_weights:" in text else []
    if "kind: images" in text:
        overrides.append(f"data.root={paths['coco_stuff'] / 'images' / 'train2017'}")
    for kind in ("voc", "ade20k", "cityscapes"):
        if f"kind: {kind}" in text:
            overrides.append(f"data.root={paths[kind]}")
    if "method: mdp" in text:
        overrides.append(f"mdp.datasets=[voc:{paths['voc']}, coco_stuff:{paths['coco_stuff']}, "
                         f"ade20k:{paths['ade20k']}, cityscapes:{paths['cityscapes']}]")
    if "method: pssl" in text:
        overrides += [f"pssl.labels={paths['labels']}", f"pssl.images={paths['imagenet']}"]
    return load_config(PAPER / name, overrides)


def test_the_paper_configs():
    assert sorted(p.name for p in PAPER.glob("*.yaml")) == [
        "densecl_coco.yaml", "finetune_ade20k.yaml", "finetune_ade20k_ssa.yaml", "finetune_cityscapes.yaml",
        "finetune_voc.yaml", "mdp_four_datasets.yaml", "pixcon_sr_coco.yaml", "pssl_label_imagenet.yaml",
        "pssl_pretrain_imagenet.yaml"]


# config: (total batch, crop, epochs, lr, weight decay, schedule) as methods.md gives each paper's recipe
PAPER_RECIPES = {
    "pssl_pretrain_imagenet.yaml": (64, 256, 30, 0.001, 1e-4, "step"),  # backbone 0.1x of 0.01 (head_lr_mult 10)
    "mdp_four_datasets.yaml": (16, 512, 100, 0.01, 5e-4, "poly"),
    "pixcon_sr_coco.yaml": (512, 224, 800, 0.4, 1e-4, "cosine"),
    "densecl_coco.yaml": (256, 224, 800, 0.3, 1e-4, "cosine"),
    "finetune_voc.yaml": (16, 480, 50, 0.01, 1e-4, "poly"),
    "finetune_ade20k.yaml": (16, 512, 127, 0.01, 5e-4, "poly"),
    "finetune_ade20k_ssa.yaml": (16, 512, 127, 6e-5, 0.01, "poly"),
    "finetune_cityscapes.yaml": (8, 769, 242, 0.01, 5e-4, "poly"),
}


@pytest.mark.parametrize("name", sorted(PAPER_RECIPES))
def test_paper_config_keeps_the_papers_recipe(name, paper_paths):
    cfg = load_paper(name, paper_paths)
    crop = cfg.views.crop_size if cfg.method in ("pixcon", "densecl") else cfg.data.crop_size
    got = (cfg.train.num_workers * cfg.train.batch_size, crop, cfg.train.epochs, cfg.optim.lr,
           cfg.optim.weight_decay, cfg.optim.schedule)
    assert got == PAPER_RECIPES[name]
    assert cfg.model.backbone == "resnet50" and cfg.train.use_gpu


def test_paper_schedules_in_iterations_and_model_details(paper_paths):
    # Fine-tunes are given in iterations by the papers; the configs count epochs of the full datasets.
    ade = load_paper("finetune_ade20k.yaml", paper_paths)
    assert round(ade.train.epochs * 20_210 / 16, -3) == 160_000
    city = load_paper("finetune_cityscapes.yaml", paper_paths)
    assert round(city.train.epochs * 2_975 / 8, -3) == 90_000
    assert (city.eval.mode, city.eval.crop, city.eval.stride) == ("slide", 769, 513)
    ssa = load_paper("finetune_ade20k_ssa.yaml", paper_paths)
    assert (ssa.model.classifier, ssa.optim.name, ssa.optim.head_lr_mult, ssa.optim.warmup_steps,
            ssa.optim.poly_power) == ("ssa", "adamw", 10.0, 1500, 1.0)
    pssl = load_paper("pssl_pretrain_imagenet.yaml", paper_paths)
    assert (pssl.pssl.num_classes, pssl.pssl.bg_weight, pssl.optim.step_epochs, pssl.model.head) == (
        1000, 0.1, [20], "deeplabv3")
    assert pssl.optim.lr * pssl.optim.head_lr_mult == pytest.approx(0.01)
    pixcon = load_paper("pixcon_sr_coco.yaml", paper_paths)
    assert (pixcon.pixcon.variant, pixcon.pixcon.queue_size, pixcon.views.scale_min, pixcon.train.sync_bn,
            pixcon.optim.warmup_steps) == ("sr", 65536, 0.08, True, round(4 * 118_287 / 512))
    densecl = load_paper("densecl_coco.yaml", paper_paths)
    assert (densecl.densecl.head_batch_norm, densecl.densecl.momentum, densecl.train.sync_bn,
            densecl.views.blur_prob) == (False, 0.999, False, [0.5, 0.5])


def test_paper_label_config_is_the_15_member_ensemble(tmp_path):
    text = (PAPER / "pssl_label_imagenet.yaml").read_text()
    label = yaml.safe_load(text)["label"]
    archs = [m.split(":", 1)[0] for m in label["members"]]
    assert len(set(archs)) == 15
    (tmp_path / "imagenet").mkdir()
    cfg = load_config(PAPER / "pssl_label_imagenet.yaml", [f"label.images={tmp_path / 'imagenet'}",
                                                           f"label.output={tmp_path / 'out'}"])
    assert (cfg.label.num_classes, cfg.label.input_size, cfg.label.geometry, cfg.label.explainer.samples,
            cfg.label.explainer.noise_level, cfg.label.explainer.target) == (1000, 298, "pad", 50, 0.1,
                                                                             "probability")


def test_cluster_templates_authenticate_and_keep_the_dashboard_private():
    cluster = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    head, workers = " ".join(cluster["head_start_ray_commands"]), " ".join(cluster["worker_start_ray_commands"])
    for command in (head, workers):
        assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=/home/ubuntu/.rayseg/ray_token" in command
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert cluster["file_mounts"] == {"/home/ubuntu/.rayseg/ray_token": "~/.rayseg/ray_token"}
    # the shared filesystem is mounted on the host and bound into the (unprivileged) container
    assert any("mount -t efs" in c for c in cluster["initialization_commands"])
    assert "-v /mnt/shared:/mnt/shared" in cluster["docker"]["run_options"]
    assert not any("mount" in c for c in cluster.get("setup_commands", []))
    for node in cluster["available_node_types"].values():
        assert "IamInstanceProfile" in node["node_config"]  # s3:// storage through roles, not keys
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
