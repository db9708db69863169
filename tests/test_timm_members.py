"""PSSL ensemble members from timm (``timm/<model>``), weights from local files: checked, hashed, loaded and
explained like torchvision members; unknown names fail as one config line."""

from __future__ import annotations

import pytest
import torch

from rayseg.config import ConfigError, ExplainerSection, load_config
from rayseg.labeling.explainers import explain_ensemble, prepare_for_explanation
from rayseg.labeling.members import check_members, load_members
from rayseg.models import build_classifier
from rayseg.models.weights import WeightsError


def test_a_timm_member_is_checked_loaded_and_explained_with_a_torchvision_one(tmp_path):
    torch.manual_seed(0)
    files = {}
    for arch in ("timm/resnet10t", "resnet18"):
        path = tmp_path / f"{arch.replace('/', '_')}.pt"
        torch.save(build_classifier(arch, 4).state_dict(), path)
        files[arch] = str(path)
    members = check_members(list(files.items()), 4)
    assert [m.arch for m in members] == ["timm/resnet10t", "resnet18"] and all(len(m.sha256) == 64 for m in members)
    models = load_members(members, 4)
    reloaded = torch.load(files["timm/resnet10t"], weights_only=True)
    torch.testing.assert_close(models[0].state_dict()["fc.weight"], reloaded["fc.weight"])
    cfg = ExplainerSection(samples=2)
    prepared = [prepare_for_explanation(m, cfg) for m in models]
    per_model, _, deciles = explain_ensemble(prepared, torch.randn(2, 3, 32, 32), torch.tensor([0, 3]), cfg,
                                             generator=torch.Generator().manual_seed(0))
    assert per_model.shape == (2, 2, 32, 32) and deciles.shape == (2, 32, 32) and int(deciles.max()) == 9
    with pytest.raises(WeightsError, match=r"do not fit timm/resnet10t with 5 classes"):
        check_members([("timm/resnet10t", files["timm/resnet10t"])], 5)


def test_unknown_timm_names_are_config_errors():
    with pytest.raises(ConfigError, match=r"classifier.archs\[0\]: unknown classifier 'timm/no_such_net'"):
        load_config(None, ["method=classifier", "classifier.archs=[timm/no_such_net]"])
    assert load_config(None, ["method=classifier", "classifier.arch=timm/resnet10t",
                              "classifier.archs=[timm/resnet10t]"]).classifier.arch == "timm/resnet10t"
