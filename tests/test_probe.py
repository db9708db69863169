"""The frozen-backbone linear probe (model.head: probe, model.freeze_backbone): what trains, what loads."""

import json
from pathlib import Path

import torch

from rayseg.config import load_config
from rayseg.engine.runner import train
from rayseg.methods import METHODS
from rayseg.models import build_model, export_weights
from rayseg.models.from_config import build_model_from_config
from rayseg.models.weights import load_weights
from tests.engine_helpers import tiny_overrides


def test_probe_head_is_batchnorm_on_the_deepest_level_and_linear_at_inference():
    model = build_model("resnet18", head="probe", num_classes=5, output_stride=16).eval()
    assert model.decoder.out_channels == 512 and model.classifier.in_channels == 512
    x = torch.randn(2, 3, 32, 32)
    feats = model.backbone(x)["out"]
    # eval mode: BatchNorm is affine, so logits at feature resolution are an affine map of the backbone features
    a, b = model.classifier(model.decoder({"out": feats})), model.classifier(model.decoder({"out": 2 * feats}))
    zero = model.classifier(model.decoder({"out": 0 * feats}))
    torch.testing.assert_close(b - zero, 2 * (a - zero), rtol=1e-4, atol=1e-4)


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(tmp_path):
    source = build_model("resnet18", head="fcn", num_classes=7, output_stride=16, channels=32)
    with torch.no_grad():
        for m in source.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    export = tmp_path / "model.pt"
    export_weights(source, export, part="model")
    cfg = load_config(None, tiny_overrides(tmp_path, "p", **{"model.head": "probe", "model.freeze_backbone": True,
                                                               "model.init_weights": str(export)}))
    model = build_model_from_config(cfg.model, num_classes=4)
    assert any("only the backbone is loaded" in n for n in model.init_report.notices)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    torch.testing.assert_close(before, source.backbone.state_dict())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("backbone.") for n in trainable)
    model.train()
    assert not model.backbone.training and model.decoder.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.randint(0, 4, (4, 32, 32)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(model.backbone.state_dict(), before)  # weights and running statistics
    assert not torch.equal(model.decoder[0].running_mean, torch.zeros(512))  # the probe's own BatchNorm trained


def test_probe_run_trains_only_the_head_and_tags_itself(tmp_path):
    pre = load_config(None, tiny_overrides(tmp_path, "pre", **{"train.epochs": 1}))
    summary = train(pre, "pretrain", METHODS[pre.method])
    export = summary["export"]["model"]
    cfg = load_config(None, tiny_overrides(tmp_path, "probe", **{
        "model.head": "probe", "model.freeze_backbone": True, "model.init_weights": export, "train.epochs": 2}))
    result = train(cfg, "finetune", METHODS[cfg.method])
    run = Path(cfg.run_dir("finetune"))
    tags = json.loads((run / "tags.json").read_text())
    assert tags["eval"] == "probe" and tags["start"] == "pre" and tags["command"] == "finetune"
    probe = build_model("resnet18", head="probe", num_classes=7, output_stride=16)  # domain A: 6 classes + bg
    load_weights(probe, result["export"]["model"])
    pretrained = build_model("resnet18", head="fcn", num_classes=7, output_stride=16, channels=32)
    load_weights(pretrained, export)
    torch.testing.assert_close(probe.backbone.state_dict(), pretrained.backbone.state_dict())
