"""Explainers: SmoothGrad against captum and closed forms, chunking under the memory cap, IG and GradCAM
against closed forms, targets, the ensemble. Tiny models and 3x8x8 / 3x16x16 images keep this fast on a CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from captum.attr import NoiseTunnel, Saliency
from torch import nn

from rayseg.config import ExplainerSection
from rayseg.labeling import (
    deciles,
    ensemble_mean,
    explain,
    explain_ensemble,
    gradcam,
    integrated_gradients,
    minmax_normalize,
    prepare_for_explanation,
    smoothgrad,
)
from rayseg.labeling.explainers import default_gradcam_layer, targets_for

K = 5  # classes
pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


class TinyNet(nn.Module):
    """Conv-BN-Tanh x2, average pool, dropout, linear. BN and dropout make train mode visibly different."""

    def __init__(self, num_classes: int = K):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.tanh(self.bn1(self.conv1(x)))
        x = torch.tanh(self.conv2(x))
        return self.fc(self.drop(x.mean(dim=(2, 3))))


def tiny_net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    net.bn1.running_mean.uniform_(-0.5, 0.5)
    net.bn1.running_var.uniform_(0.5, 2.0)
    return net


def linear_model(h: int, w: int, seed: int = 0, bias: torch.Tensor | None = None, scale: float = 1.0) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(3 * h * w, K)
    with torch.no_grad():
        lin.weight.copy_(scale * torch.randn(K, 3 * h * w, generator=g))
        lin.bias.copy_(bias if bias is not None else torch.randn(K, generator=g))
    return nn.Sequential(nn.Flatten(), lin)


def images(b: int = 3, h: int = 16, w: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # different value ranges per image, so the per-image noise std matters
    return torch.randn(b, 3, h, w, generator=g) * torch.linspace(0.5, 2.0, b).view(b, 1, 1, 1)


def count_forwards(model: nn.Module) -> tuple[list[int], list[bool], object]:
    sizes, modes = [], []

    def hook(module, inputs, output):
        sizes.append(inputs[0].shape[0])
        modes.append(module.training or any(p.requires_grad for p in module.parameters()))

    return sizes, modes, model.register_forward_hook(hook)


def prob_fn(model):
    return lambda x: F.softmax(model(x), dim=1)


# ----------------------------------------------------------------------------------------------- SmoothGrad vs captum


@pytest.mark.parametrize("batch_cap", [256, 4])
def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_seed(batch_cap):
    """Real NoiseTunnel(Saliency) image by image with stdevs = 0.1 * range(x_b), after the same manual_seed."""
    model, x, t, s = tiny_net(), images(), torch.tensor([0, 3, 1]), 6
    cfg = ExplainerSection(samples=s, noise_level=0.1, target="probability", batch_cap=batch_cap)
    model.train()  # smoothgrad must switch to eval itself (BN running stats, no dropout)
    torch.manual_seed(123)
    ours = smoothgrad(model, x, t, cfg)
    assert model.training

    model.eval()
    nt = NoiseTunnel(Saliency(prob_fn(model)))
    torch.manual_seed(123)
    ref = torch.cat([
        nt.attribute(x[b:b + 1], nt_type="smoothgrad", nt_samples=s, stdevs=0.1 * (x[b].max() - x[b].min()).item(),
                     target=int(t[b]), abs=False).abs().sum(dim=1)
        for b in range(3)
    ])
    assert ours.shape == (3, 16, 16)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # the noise matters: the plain gradient at x is a different map
    plain = Saliency(prob_fn(model)).attribute(x, target=t, abs=False).abs().sum(1)
    assert (plain - ref).abs().max() > 0.05 * ref.abs().max()


def test_smoothgrad_generator_reproduces_the_global_seed_draw():
    model, x, t = tiny_net(), images(), torch.tensor([2, 2, 4])
    cfg = ExplainerSection(samples=5, batch_cap=7)
    torch.manual_seed(5)
    a = smoothgrad(model, x, t, cfg)
    b = smoothgrad(model, x, t, cfg, generator=torch.Generator().manual_seed(5))
    c = smoothgrad(model, x, t, cfg, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_smoothgrad_equals_saliency_averaged_over_injected_noise():
    """Given explicit noise: E = sum_c |mean_s Saliency(x + n_s)| (here on the logit)."""
    model, x, t = tiny_net(), images(), torch.tensor([4, 0, 2])
    noise = 0.7 * torch.randn(3, 5, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    cfg = ExplainerSection(target="logit", batch_cap=4)
    ours = smoothgrad(model, x, t, cfg, noise=noise)
    model.eval()
    sal = Saliency(model)
    grads = torch.stack([sal.attribute(x + noise[:, s], target=t, abs=False) for s in range(5)])
    ref = grads.mean(0).abs().sum(1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    # averaging comes before abs: sum of |per-sample grads| is a different (larger) map, far beyond the tolerance
    assert (grads.abs().mean(0).sum(1) - ref).max() > 0.03 * ref.max()


# ----------------------------------------------------------------------------------------------- closed forms


def test_smoothgrad_of_the_logit_of_a_linear_model_is_abs_weight_summed_over_channels():
    h = w = 8
    model = linear_model(h, w)
    x, t = images(3, h, w), torch.tensor([1, 4, 1])
    weight = model[1].weight.detach().view(K, 3, h, w)
    expected = weight[t].abs().sum(dim=1)  # [B, H, W]
    for seed, level in ((0, 0.1), (1, 3.0)):  # any noise
        cfg = ExplainerSection(samples=4, noise_level=level, target="logit", batch_cap=5)
        out = smoothgrad(model, x, t, cfg, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_smoothgrad_of_the_probability_matches_the_softmax_derivative():
    """Linear model z = W x + b, p = softmax(z): dp_t/dx = p_t (W_t - sum_k p_k W_k) at each noisy copy."""
    h = w = 4
    model = linear_model(h, w, scale=0.3)
    x, t = images(2, h, w), torch.tensor([3, 0])
    noise = 0.5 * torch.randn(2, 4, 3, h, w, generator=torch.Generator().manual_seed(2))
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    expected = []
    for b in range(2):
        grads = []
        for s in range(4):
            p = torch.softmax(weight @ (x[b] + noise[b, s]).reshape(-1) + bias, dim=0)
            grads.append(p[t[b]] * (weight[t[b]] - p @ weight))
        expected.append(torch.stack(grads).mean(0).view(3, h, w).abs().sum(0))
    out = smoothgrad(model, x, t, ExplainerSection(target="probability"), noise=noise)
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------- efficiency


def test_memory_cap_chunks_do_not_change_the_result_and_bound_each_forward():
    model, x, t = tiny_net(), images(3), torch.tensor([0, 1, 2])
    noise = 0.3 * torch.randn(3, 4, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # B*S = 12
    sizes, param_modes, handle = count_forwards(model)
    big = smoothgrad(model, x, t, ExplainerSection(batch_cap=1000), noise=noise)
    assert sizes == [12]
    sizes.clear()
    small = smoothgrad(model, x, t, ExplainerSection(batch_cap=4), noise=noise)
    assert sizes == [4, 4, 4]  # ceil(12 / 4) = 3 forwards
    sizes.clear()
    odd = smoothgrad(model, x, t, ExplainerSection(batch_cap=5), noise=noise)  # chunks straddle images
    assert sizes == [5, 5, 2]
    sizes.clear()
    many = 0.3 * torch.randn(3, 100, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    smoothgrad(model, x, t, ExplainerSection(batch_cap=1000), noise=many)
    assert sizes == [300]  # an explicit cap is not bounded by the auto chunk's MAX_CHUNK
    handle.remove()
    assert not any(param_modes)  # every forward ran in eval mode with frozen parameters
    torch.testing.assert_close(small, big, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(odd, big, rtol=1e-6, atol=1e-8)


def test_fixed_chunks_pad_the_last_chunk_without_changing_the_maps():
    model, x, t = tiny_net(), images(3), torch.tensor([0, 1, 2])
    noise = 0.3 * torch.randn(3, 4, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # B*S = 12
    sizes, _, handle = count_forwards(model)
    plain = smoothgrad(model, x, t, ExplainerSection(batch_cap=5), noise=noise)
    sizes.clear()
    padded = smoothgrad(model, x, t, ExplainerSection(batch_cap=5, fixed_chunks=True), noise=noise)
    handle.remove()
    assert sizes == [5, 5, 5]  # one shape: the last chunk of 2 copies is padded with 3 zero rows
    torch.testing.assert_close(padded, plain, rtol=1e-6, atol=1e-8)


class RunsOutOfMemory(nn.Module):
    """Stands in for a member on a small GPU: a forward of more than ``fits`` copies raises CUDA's out-of-memory
    error (on any device); ``refused`` counts those forwards."""

    def __init__(self, model: nn.Module, fits: int):
        super().__init__()
        self.model, self.fits, self.refused = model, fits, 0

    def forward(self, x):
        if x.shape[0] > self.fits:
            self.refused += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory: {x.shape[0]} copies")
        return self.model(x)


def test_a_chunk_out_of_device_memory_is_halved_and_the_size_kept_for_the_next_batches():
    model, x, t = tiny_net(), images(3), torch.tensor([0, 1, 2])
    cfg = ExplainerSection(samples=8, batch_cap=16, fixed_chunks=True)  # B*S = 24 copies
    expected = smoothgrad(model, x, t, cfg, generator=torch.Generator().manual_seed(3))
    small = RunsOutOfMemory(model, fits=5)
    sizes, _, handle = count_forwards(small.model)
    with pytest.warns(UserWarning) as warned:
        out = smoothgrad(small, x, t, cfg, generator=torch.Generator().manual_seed(3))
    assert [str(w.message) for w in warned] == [
        f"explainer: RunsOutOfMemory ran out of device memory with {n} copies of 16x16 per chunk; {n // 2} from now on"
        for n in (16, 8)]
    assert small.refused == 2 and sizes == [4] * 6  # 16 and 8 refused, then six chunks of 4: the same copies
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-8)  # the same noise, so the same maps
    sizes.clear()
    again = smoothgrad(small, x, t, cfg, generator=torch.Generator().manual_seed(3))  # learned: no refusal
    assert small.refused == 2 and sizes == [4] * 6
    torch.testing.assert_close(again, expected, rtol=1e-6, atol=1e-8)
    sizes.clear()
    with pytest.warns(UserWarning) as warned:  # another image size starts from the configured chunk again
        smoothgrad(small, images(3, 8, 8), t, cfg)
    assert [str(w.message).split(" with ")[1] for w in warned] == [
        "16 copies of 8x8 per chunk; 8 from now on", "8 copies of 8x8 per chunk; 4 from now on"]
    assert small.refused == 4 and sizes == [4] * 6
    handle.remove()
    with pytest.raises(torch.cuda.OutOfMemoryError):  # not even one copy fits: the error is the device's
        with pytest.warns(UserWarning):
            smoothgrad(RunsOutOfMemory(model, fits=0), x, t, cfg)


def test_a_compiled_member_gives_the_uncompiled_maps():
    cfg = ExplainerSection(samples=3, batch_cap=4, fixed_chunks=True, polyphase_stem=False)
    model, x, t = tiny_net(), images(2), torch.tensor([1, 3])
    eager = smoothgrad(prepare_for_explanation(model, cfg), x, t, cfg, generator=torch.Generator().manual_seed(0))
    compiled = prepare_for_explanation(model, dataclasses.replace(cfg, compile=True))
    assert compiled is not model and hasattr(compiled, "_orig_mod")
    out = smoothgrad(compiled, x, t, cfg, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-6)


def test_bf16_forward_keeps_the_fp32_top_decile_and_ranking():
    """The GPU path's bf16 autocast (fp32 accumulation of the gradients), here with CPU autocast: the ensemble's
    top-decile pixels and pixel ranking stay those of fp32. With the paper's S = 50 copies: bf16 rounding is
    averaged over the copies (at S = 4 the agreement is about 0.91, at 16 0.94; random weights, 48 px)."""
    import torchvision

    torch.manual_seed(0)
    members = [torchvision.models.resnet18(num_classes=K).eval(), torchvision.models.mobilenet_v3_small(
        num_classes=K).eval()]
    x, t = torch.randn(2, 3, 48, 48), torch.tensor([0, 3])
    cfg = ExplainerSection(samples=50)

    class Bf16(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, inp):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.m(inp)

    fp32 = explain_ensemble(members, x, t, cfg, generator=torch.Generator().manual_seed(0))[1]
    bf16 = explain_ensemble([Bf16(m) for m in members], x, t, cfg, generator=torch.Generator().manual_seed(0))[1]
    top32, top16 = deciles(fp32) >= 9, deciles(bf16) >= 9
    assert (top32 & top16).sum() / top32.sum() >= 0.95
    r32 = fp32.flatten(1).argsort(1).argsort(1).float()
    r16 = bf16.flatten(1).argsort(1).argsort(1).float()
    spearman = F.cosine_similarity(r32 - r32.mean(1, keepdim=True), r16 - r16.mean(1, keepdim=True), dim=1)
    assert spearman.min() >= 0.95


def test_model_state_is_restored_and_no_parameter_gradients_accumulate():
    model, x = tiny_net(), images(2)
    model.fc.bias.requires_grad_(False)  # a frozen parameter stays frozen
    model.train()
    smoothgrad(model, x, torch.tensor([1, 2]), ExplainerSection(samples=2))
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [True] * 7 + [False]
    assert all(p.grad is None for p in model.parameters())


def test_amp_is_ignored_on_cpu_and_channels_last_changes_only_rounding():
    model, x, t = tiny_net(), images(2), torch.tensor([1, 2])
    noise = torch.randn(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    amp = smoothgrad(model, x, t, ExplainerSection(amp=True, channels_last=False), noise=noise)
    plain = smoothgrad(model, x, t, ExplainerSection(amp=False, channels_last=False), noise=noise)
    torch.testing.assert_close(amp, plain, rtol=0, atol=0)
    fast = smoothgrad(model, x, t, ExplainerSection(amp=False, channels_last=True), noise=noise)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-6)


def test_prepare_for_explanation_folds_batchnorm_without_changing_the_maps():
    model, x, t = tiny_net(), images(2), torch.tensor([1, 2])
    noise = torch.randn(2, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    cfg = ExplainerSection(channels_last=True)
    prepared = prepare_for_explanation(model, cfg)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input model is left alone
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not prepared.training and not any(p.requires_grad for p in prepared.parameters())
    reference = smoothgrad(model, x, t, ExplainerSection(channels_last=False), noise=noise)
    torch.testing.assert_close(smoothgrad(prepared, x, t, cfg, noise=noise), reference, rtol=1e-4, atol=1e-6)
    # GradCAM reads layer activations, which folding would change: BatchNorm stays
    kept = prepare_for_explanation(model, dataclasses.replace(cfg, method="gradcam"))
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.modules())
    assert prepare_for_explanation(model, dataclasses.replace(cfg, fold_batchnorm=False)).bn1 is not None


def test_prepare_for_explanation_keeps_an_untraceable_model_with_a_warning():
    class DataDependent(TinyNet):
        def forward(self, x):
            if x.sum() > 0:  # torch.fx cannot trace control flow on values
                x = -x
            return super().forward(x)

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="BatchNorm not folded"):
        prepared = prepare_for_explanation(DataDependent(), ExplainerSection())
    assert any(isinstance(m, nn.BatchNorm2d) for m in prepared.modules())


# ----------------------------------------------------------------------------------------------- IG and GradCAM


def test_integrated_gradients_of_a_linear_logit_is_input_times_weight():
    """Constant gradient W_t: IG with baseline 0 is x * W_t exactly, so E = sum_c |x_c W_t,c|."""
    h = w = 8
    model = linear_model(h, w)
    x, t = images(3, h, w), torch.tensor([0, 2, 4])
    sizes, _, handle = count_forwards(model)
    out = integrated_gradients(model, x, t, steps=8, cfg=ExplainerSection(target="logit", batch_cap=4))
    handle.remove()
    expected = (x * model[1].weight.detach().view(K, 3, h, w)[t]).abs().sum(1)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert max(sizes) <= 4 and sum(sizes) == 3 * 8


def test_gradcam_closed_form_on_a_one_conv_net():
    """A = conv(x) (stride 2), z = V mean(A) + c: alpha_k = V_tk / (h w), cam = relu(sum_k alpha_k A_k), upsampled."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 2, stride=2)
    head = nn.Linear(4, K)
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    assert default_gradcam_layer(model) is conv
    x, t = images(3, 8, 8), torch.tensor([1, 3, 0])
    out = gradcam(model, None, x, t, ExplainerSection(target="logit", batch_cap=2))
    with torch.no_grad():
        acts = conv(x)  # [B, 4, 4, 4]
        alpha = head.weight[t] / 16  # [B, 4]
        cam = torch.relu((alpha[:, :, None, None] * acts).sum(1, keepdim=True))
        expected = F.interpolate(cam, size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    assert out.shape == (3, 8, 8) and (out >= 0).all() and (expected > 0).any() and (expected == 0).any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_default_gradcam_layer_of_torchvision_and_feature_models():
    from rayseg.models import build_classifier

    resnet = build_classifier("resnet18", 4)
    assert default_gradcam_layer(resnet) is resnet.layer4
    mobilenet = build_classifier("mobilenet_v3_small", 4)
    assert default_gradcam_layer(mobilenet) is mobilenet.features[-1]

    class VggLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.MaxPool2d(2))

    vgg = VggLike()
    assert default_gradcam_layer(vgg) is vgg.features[2]
    with pytest.raises(ValueError, match="no Conv2d"):
        default_gradcam_layer(linear_model(2, 2))

    # the real thing runs once on 32x32: one finite, non-negative map per image
    x = images(2, 32, 32)
    out = explain(resnet, x, torch.tensor([0, 3]), ExplainerSection(method="gradcam", target="logit"))
    assert out.shape == (2, 32, 32) and (out >= 0).all() and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------- targets, dispatch, ensemble


def test_targets_from_labels_or_predictions():
    h = w = 4
    model = linear_model(h, w, scale=0.01, bias=torch.tensor([0.0, 0.0, 0.0, 10.0, 0.0]))
    x, labels = images(3, h, w), torch.tensor([0, 1, 2])
    assert torch.equal(targets_for(model, x, labels, ExplainerSection()), labels)
    assert torch.equal(targets_for(model, x, None, ExplainerSection(target_from="prediction", batch_cap=2)),
                       torch.tensor([3, 3, 3]))
    with pytest.raises(ValueError, match="labels"):
        targets_for(model, x, None, ExplainerSection())
    with pytest.raises(ValueError, match="3 images"):
        targets_for(model, x, torch.tensor([0, 1]), ExplainerSection())


def test_config_rejects_unknown_choices():
    with pytest.raises(ValueError, match="method"):
        ExplainerSection(method="lime")
    with pytest.raises(ValueError, match="target"):
        ExplainerSection(target="loss")
    with pytest.raises(ValueError, match="batch_cap"):
        ExplainerSection(batch_cap=-1)


def test_the_auto_chunk_keeps_the_pixels_per_chunk_and_an_explicit_cap_wins():
    from rayseg.labeling.explainers import CHUNK_PIXELS, MAX_CHUNK, chunk_size

    auto = ExplainerSection()
    assert auto.batch_cap == 0
    small, large = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 224, 224)
    assert chunk_size(auto, small) == min(MAX_CHUNK, CHUNK_PIXELS["cpu"] // 64 ** 2)
    assert chunk_size(auto, large) == CHUNK_PIXELS["cpu"] // 224 ** 2 < chunk_size(auto, small)
    assert chunk_size(auto, torch.zeros(1, 3, 4096, 4096)) == 1
    assert chunk_size(ExplainerSection(batch_cap=5), large) == 5
    model, x, t = tiny_net(), images(3), torch.tensor([0, 1, 2])  # 16 px: 12 copies in one chunk
    sizes, _, handle = count_forwards(model)
    smoothgrad(model, x, t, ExplainerSection(samples=4), generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert sizes == [12]


def test_explain_dispatches_on_method():
    model, x, labels = tiny_net(), images(2), torch.tensor([1, 4])
    cfg = ExplainerSection(samples=3)
    out = explain(model, x, labels, cfg, generator=torch.Generator().manual_seed(3))
    ref = smoothgrad(model, x, labels, cfg, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ig = explain(model, x, labels, dataclasses.replace(cfg, method="integrated_gradients", ig_steps=4))
    torch.testing.assert_close(ig, integrated_gradients(model, x, labels, steps=4, cfg=cfg))


def test_explain_ensemble_with_each_models_own_prediction():
    """Two linear models whose biases force predictions 0 and 2: each model explains its own class, so
    per-model maps are |W_A[0]| and |W_B[2]| summed over channels; then min-max mean and deciles."""
    h = w = 4
    model_a = linear_model(h, w, seed=0, scale=0.01, bias=torch.tensor([10.0, 0, 0, 0, 0]))
    model_b = linear_model(h, w, seed=1, scale=0.01, bias=torch.tensor([0, 0, 10.0, 0, 0]))
    x = images(2, h, w)
    cfg = ExplainerSection(samples=3, target="logit", target_from="prediction")
    per_model, scores, dec = explain_ensemble([model_a, model_b], x, None, cfg)
    map_a = model_a[1].weight.detach()[0].view(3, h, w).abs().sum(0)
    map_b = model_b[1].weight.detach()[2].view(3, h, w).abs().sum(0)
    assert per_model.shape == (2, 2, h, w) and scores.shape == (2, h, w) and dec.dtype == torch.uint8
    torch.testing.assert_close(per_model[0], map_a.expand(2, h, w), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(per_model[1], map_b.expand(2, h, w), rtol=1e-5, atol=1e-7)
    expected = (minmax_normalize(map_a) + minmax_normalize(map_b)) / 2
    torch.testing.assert_close(scores, expected.expand(2, h, w), rtol=1e-5, atol=1e-6)
    assert torch.equal(dec, deciles(scores))
    assert torch.equal(scores, ensemble_mean(per_model))
    with pytest.raises(ValueError, match="at least one"):
        explain_ensemble([], x, None, cfg)
