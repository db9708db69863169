"""Backbones, decoders, the segmentation model and classifiers: shapes, strides, names, parameter counts."""

import pytest
import torch
import torchvision
from torch import nn

from rayseg.models import build_backbone, build_classifier, build_head, build_model
from rayseg.models.backbones import dilate_resnet

H = W = 64
CASES = (
    [("resnet18", head, os_) for head in ("fcn", "deeplabv3", "fpn") for os_ in (8, 16, 32)]
    + [("resnet34", "fcn", 8), ("resnet50", "deeplabv3", 16), ("resnet50", "fpn", 32)]
    + [("mobilenet_v3_large", "fcn", 16), ("mobilenet_v3_large", "deeplabv3", 32), ("mobilenet_v3_large", "fpn", 16)]
)


@pytest.mark.parametrize("backbone,head,output_stride", CASES)
def test_shapes_and_strides(backbone, head, output_stride):
    torch.manual_seed(0)
    model = build_model(backbone, head, num_classes=5, output_stride=output_stride, channels=32).eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)

    assert logits.shape == (1, 5, H, W)
    levels = features["backbone"]
    assert list(levels) == ["c2", "c3", "c4", "out"]
    for level, tensor in levels.items():  # declared channels and strides are the real ones
        stride = model.backbone.strides[level]
        assert tensor.shape == (1, model.backbone.channels[level], H // stride, W // stride)
    assert model.backbone.strides["out"] == output_stride
    decoder_stride = 4 if head == "fpn" else output_stride  # fpn decodes at its finest level (c2)
    assert features["decoder"].shape == (1, 32, H // decoder_stride, W // decoder_stride)
    assert model.decoder.out_channels == 32


def test_forward_is_classify_of_decoder_features():
    model = build_model("resnet18", "fcn", num_classes=3, output_stride=32).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        decoder = model.forward_features(x)["decoder"]
        expected = model.classify(decoder, (32, 48))
        assert torch.equal(model(x), expected)
        manual = nn.functional.interpolate(model.classifier(decoder), size=(32, 48), mode="bilinear")
    assert torch.allclose(expected, manual)
    assert decoder.shape == (2, 128, 1, 2) and expected.shape == (2, 3, 32, 48)


def test_arch_rebuilds_the_model_and_replace_classifier():
    model = build_model("resnet18", "deeplabv3", num_classes=21, output_stride=16, channels=64, dropout=0.2)
    assert model.arch == {
        "backbone": "resnet18",
        "head": "deeplabv3",
        "output_stride": 16,
        "channels": 64,
        "dropout": 0.2,
        "num_classes": 21,
    }
    rebuilt = build_model(**model.arch)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}

    model.replace_classifier(6)
    assert model.arch["num_classes"] == 6 and model.num_classes == 6
    assert model.classifier.weight.shape == (6, 64, 1, 1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 16, 16)).shape == (1, 6, 16, 16)


def test_parameter_count_resnet18_fcn():
    model = build_model("resnet18", "fcn", num_classes=21, channels=128)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # torchvision resnet18 has 11,689,512 parameters, 513,000 of them in fc
    assert count(model.backbone) == 11_689_512 - 513_000
    assert count(model.decoder) == 512 * 128 * 9 + 2 * 128  # conv3x3 without bias + BN
    assert count(model.classifier) == 128 * 21 + 21
    assert count(model) == 11_769_301


def test_backbone_keys_are_torchvisions():
    tv_resnet18 = torchvision.models.resnet18(weights=None).state_dict()
    assert set(build_backbone("resnet18").state_dict()) == set(tv_resnet18) - {"fc.weight", "fc.bias"}
    tv_resnet50 = torchvision.models.resnet50(weights=None).state_dict()
    backbone50 = build_backbone("resnet50", output_stride=16).state_dict()
    assert set(backbone50) == set(tv_resnet50) - {"fc.weight", "fc.bias"}
    assert all(backbone50[k].shape == tv_resnet50[k].shape for k in backbone50)
    tv_mobilenet = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    assert set(build_backbone("mobilenet_v3_large", 16).state_dict()) == {
        k for k in tv_mobilenet if k.startswith("features.")
    }


def test_dilate_resnet_matches_torchvision_flag():
    def convs(model):
        return [(n, m.stride, m.dilation, m.padding) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]

    dilate = [False, True, True]  # output stride 8: layer3 and layer4 dilated
    ours = dilate_resnet(torchvision.models.resnet50(weights=None), dilate)
    theirs = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate)
    assert convs(ours) == convs(theirs)
    assert convs(ours) != convs(torchvision.models.resnet50(weights=None))


def test_resnet18_dilations_at_output_stride_8():
    backbone = build_backbone("resnet18", output_stride=8)
    layer3, layer4 = backbone.layer3, backbone.layer4
    assert layer3[0].conv1.stride == (1, 1) and layer3[0].downsample[0].stride == (1, 1)
    assert [layer3[0].conv1.dilation, layer3[1].conv1.dilation] == [(1, 1), (2, 2)]
    assert [layer4[0].conv1.dilation, layer4[1].conv2.dilation] == [(2, 2), (4, 4)]
    assert layer4[1].conv2.padding == (4, 4)


@pytest.mark.parametrize("output_stride,rates", [(8, (12, 24, 36)), (16, (6, 12, 18)), (32, (3, 6, 9))])
def test_aspp_rates_follow_output_stride(output_stride, rates):
    head = build_head("deeplabv3", {"out": 16}, channels=8, output_stride=output_stride, dropout=0.1)
    aspp = head[0]
    assert tuple(aspp.convs[i][0].dilation[0] for i in (1, 2, 3)) == rates


def test_heads_read_their_levels_and_end_with_dropout():
    channels = {"c2": 8, "c3": 16, "c4": 32, "out": 64}
    fpn = build_head("fpn", channels, channels=16, output_stride=8, dropout=0.3)
    assert fpn.levels == ("c2", "c3", "c4", "out") and len(fpn.fpn.inner_blocks) == 4
    fcn = build_head("fcn", channels, channels=16, output_stride=8, dropout=0.3)
    assert fcn.levels == ("out",)
    for head in (fpn, fcn, build_head("deeplabv3", channels, 16, 8, 0.3)):
        assert head.out_channels == 16
        assert [m.p for m in head.modules() if isinstance(m, nn.Dropout)][-1] == 0.3


def test_fpn_output_depends_on_every_level():
    torch.manual_seed(0)
    head = build_head("fpn", {"c2": 4, "c3": 4, "c4": 4, "out": 4}, channels=8, output_stride=8, dropout=0.0).eval()
    features = {
        "c2": torch.randn(1, 4, 16, 16, requires_grad=True),
        "c3": torch.randn(1, 4, 8, 8, requires_grad=True),
        "c4": torch.randn(1, 4, 8, 8, requires_grad=True),
        "out": torch.randn(1, 4, 4, 4, requires_grad=True),
    }
    out = head(features)
    assert out.shape == (1, 8, 16, 16)
    out.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in features.values())


def test_unsupported_output_stride_and_unknown_names():
    with pytest.raises(ValueError) as err:
        build_backbone("mobilenet_v3_large", output_stride=8)
    assert str(err.value) == "backbone mobilenet_v3_large supports output_stride 16 or 32, got 8"
    with pytest.raises(ValueError, match="backbone resnet18 supports output_stride 8, 16 or 32, got 4"):
        build_model("resnet18", output_stride=4)
    with pytest.raises(ValueError) as err:
        build_backbone("vit_b_16")
    assert str(err.value) == (
        "unknown backbone 'vit_b_16'; supported: resnet18, resnet34, resnet50, resnet101, resnet152, mobilenet_v3_large"
    )
    with pytest.raises(ValueError, match=r"unknown head 'unet'; supported: fcn, deeplabv3, fpn"):
        build_model(head="unet")
    with pytest.raises(ValueError, match="head deeplabv3 supports output_stride 8, 16 or 32, got 4"):
        build_head("deeplabv3", {"out": 8}, channels=8, output_stride=4, dropout=0.1)


CLASSIFIER_NAMES = [
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "densenet121",
    "efficientnet_b0",
    "vgg11_bn",
    "shufflenet_v2_x1_0",
    "regnet_y_400mf",
]


@pytest.mark.parametrize("name", CLASSIFIER_NAMES)
def test_build_classifier(name):
    model = build_classifier(name, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_build_classifier_unknown_name():
    with pytest.raises(ValueError) as err:
        build_classifier("fcn_resnet50", num_classes=3)
    assert str(err.value).startswith("unknown classifier 'fcn_resnet50'; use a torchvision classification model")
    assert "\n" not in str(err.value)
