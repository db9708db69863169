"""Per-model explanations for PSSL label generation (methods.md §3.1 step 2), plain PyTorch + captum.

The default explainer is SmoothGrad with the InterpretDL defaults of the paper: 50 noisy copies of each image,
noise std ``0.1 · (max x − min x)`` of that image's normalised input, gradient of the target class's softmax
probability, gradients averaged over the copies, then ``|·|`` summed over channels::

    E(x) = Σ_c | (1/S) Σ_s ∂ f_t(x + n_s) / ∂x_c |,      n_s ~ N(0, σ²),  σ = noise_level · (max x − min x)

:func:`smoothgrad` computes exactly what ``NoiseTunnel(Saliency(f)).attribute(x, nt_type="smoothgrad",
stdevs=σ, abs=False)`` followed by ``.abs().sum(1)`` computes (the same noise gives the same map, and with
the same RNG seed it even draws the same noise), but batches noisy copies of several images into one
forward/backward pass of at most ``batch_cap`` samples. IntegratedGradients and GradCAM go through captum.

Models are used as they are (already on the images' device). While explaining, a model is put in eval mode
and its parameters stop requiring gradients; both are restored afterwards.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from rayseg.config import ExplainerSection
from rayseg.labeling.ensemble import deciles, ensemble_mean

__all__ = [
    "METHODS",
    "ExplainerSection",
    "default_gradcam_layer",
    "explain",
    "explain_ensemble",
    "gradcam",
    "integrated_gradients",
    "prepare_for_explanation",
    "smoothgrad",
    "targets_for",
    "chunk_size",
]

METHODS = ("smoothgrad", "integrated_gradients", "gradcam")  # the choices of label.explainer.method


# --------------------------------------------------------------------------------------------------- helpers

# ``batch_cap: 0`` (auto): input pixels per forward/backward chunk, by device. On a CPU the chunk that pays at 64 px
# (256 copies) costs at 224 px, where 8-64 copies run best (bench/RESULTS.md, 2026-11-30, the explainer at both
# sizes), so the auto chunk keeps the pixels, not the copies, constant: 256 at 64 px, 20 at 224 px. On a GPU it
# is sized for memory: 64 copies at 224 px for the 15-member ensemble in bf16 (not measured yet); a chunk that does
# not fit is halved (:func:`smoothgrad`).
CHUNK_PIXELS = {"cpu": 256 * 64 * 64, "cuda": 64 * 224 * 224}
MAX_CHUNK = 256
# A chunk that runs out of device memory is halved and retried (the same copies, so the same maps); the smaller size
# is kept per model and image size, so a process (an explainer actor) learns what its device holds once.
_FITTING_CHUNK: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int], int]] = weakref.WeakKeyDictionary()


def chunk_size(cfg: ExplainerSection, images: Tensor) -> int:
    """Samples per forward/backward: ``cfg.batch_cap``, or with 0 (auto) as many as hold
    ``CHUNK_PIXELS[device]`` pixels of ``images``' size (at least 1, at most ``MAX_CHUNK``)."""
    if cfg.batch_cap:
        return int(cfg.batch_cap)
    pixels = CHUNK_PIXELS["cuda" if images.is_cuda else "cpu"]
    return max(1, min(MAX_CHUNK, pixels // (images.shape[-2] * images.shape[-1])))



@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while explaining (gradients flow to the inputs only); restore after."""
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _fast_path(model: nn.Module, images: Tensor,
               cfg: ExplainerSection) -> tuple[contextlib.AbstractContextManager, bool]:
    """(autocast context, use channels_last) for this device: autocast only on CUDA."""
    on_cuda = images.is_cuda
    use_cl = bool(cfg.channels_last and images.ndim == 4)
    if use_cl:
        model.to(memory_format=torch.channels_last)  # in place; numerically neutral
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and on_cuda) else contextlib.nullcontext()
    return amp, use_cl


def _target_scores(outputs: Tensor, targets: Tensor, target: str) -> Tensor:
    """``f_t`` per sample: the softmax probability (``target="probability"``) or the logit of class ``t``."""
    outputs = outputs.float()
    if target == "probability":
        outputs = outputs.softmax(dim=1)
    return outputs.gather(1, targets.view(-1, 1)).squeeze(1)


def _score_function(model: nn.Module, target: str) -> Callable[[Tensor], Tensor]:
    """Forward function for captum: class probabilities or logits, ``[N, K]``."""
    if target == "probability":
        return lambda x: model(x).float().softmax(dim=1)
    return lambda x: model(x).float()


def _check_inputs(images: Tensor, targets: Tensor) -> Tensor:
    if images.ndim != 4:
        raise ValueError(f"expected images of shape [B, C, H, W], got shape {tuple(images.shape)}")
    targets = torch.as_tensor(targets, device=images.device).long().reshape(-1)
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f"got {targets.shape[0]} targets for {images.shape[0]} images")
    return targets


def prepare_for_explanation(model: nn.Module, cfg: ExplainerSection) -> nn.Module:
    """The model to explain with, prepared once (an actor calls this after loading each member): eval mode, no
    parameter gradients, BatchNorm folded into the preceding convolution (``cfg.fold_batchnorm``, SmoothGrad and
    IG; ``W' = W·γ/√(σ²+ε)``, ``b' = (b − μ)·γ/√(σ²+ε) + β``, the same function in eval mode, done by
    ``torch.fx.experimental.optimization.fuse``), image-facing strided convolutions with a polyphase input
    gradient (``cfg.polyphase_stem``), channels-last weights (``cfg.channels_last``) and ``torch.compile``
    (``cfg.compile``, shape-specialised: use it with ``cfg.fixed_chunks``).

    A model that ``torch.fx`` cannot trace is kept unfolded (with a warning). The input model is not modified."""
    import copy
    import warnings

    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.fold_batchnorm and cfg.method != "gradcam":
        from torch.fx.experimental.optimization import fuse

        try:
            model = fuse(model, inplace=True)
        except Exception as exc:  # torch.fx raises various errors for untraceable control flow
            warnings.warn(f"{type(model).__name__}: BatchNorm not folded (torch.fx cannot trace it: "
                          f"{type(exc).__name__})", stacklevel=2)
    if cfg.polyphase_stem and cfg.method != "gradcam":
        from rayseg.labeling.input_grad import use_polyphase_input_grad

        use_polyphase_input_grad(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model = torch.compile(model, dynamic=False)
    return model


# --------------------------------------------------------------------------------------------------- targets


def targets_for(model: nn.Module, images: Tensor, labels: Tensor | None, cfg: ExplainerSection) -> Tensor:
    """Target class of each image: ``labels`` (``target_from="label"``) or ``argmax_k f_k(x)`` of this model
    on the clean images (``target_from="prediction"``, eval mode, ``batch_cap`` images per forward). int64 ``[B]``."""
    if cfg.target_from == "label":
        if labels is None:
            raise ValueError("target_from='label' needs the images' labels")
        return _check_inputs(images, labels)
    preds = []
    with _explaining(model), torch.no_grad():
        for chunk in images.split(chunk_size(cfg, images)):
            preds.append(model(chunk).argmax(dim=1))
    return torch.cat(preds).long()


# --------------------------------------------------------------------------------------------------- SmoothGrad


def smoothgrad(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    cfg: ExplainerSection | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothGrad saliency maps ``[B, H, W]`` of ``images`` ``[B, C, H, W]`` for the classes ``targets`` ``[B]``.

    ``E_b = Σ_c | (1/S) Σ_{s=1..S} ∂ f_{t_b}(x_b + n_{b,s}) / ∂x_b |_c`` : gradients averaged over the S noisy
    copies first, then absolute value, then sum over channels. ``f_t`` is the softmax probability of class ``t``
    (``cfg.target="probability"``) or its logit (``"logit"``).

    Noise: ``noise`` ``[B, S, C, H, W]`` is added as given (``S`` = ``noise.shape[1]``; ``cfg.samples`` and
    ``cfg.noise_level`` are then unused). Otherwise ``n_{b,s} = σ_b · ε``, ``ε ~ N(0, 1)`` drawn from
    ``generator`` (default: torch's global RNG) with ``σ_b = cfg.noise_level · (max x_b − min x_b)``: one
    ``randn(S, C, H, W)`` per image, images in order. This is exactly captum's draw
    (``torch.normal(0, σ·ones(S, C, H, W))`` is bitwise ``randn · σ``), so after the same ``torch.manual_seed``
    the maps equal ``NoiseTunnel(Saliency(f)).attribute(x_b[None], nt_type="smoothgrad", nt_samples=S,
    stdevs=σ_b, target=t_b, abs=False).abs().sum(1)`` called image by image.

    Efficiency: the ``B·S`` noisy copies are processed in chunks of at most ``cfg.batch_cap`` samples (copies of
    several images share a chunk), one forward and one ``torch.autograd.grad`` per chunk, gradients w.r.t. the
    inputs only; only the noise blocks of the images in the current chunk and one chunk are in memory at a time.
    With ``cfg.fixed_chunks`` the last chunk is padded with zero rows to the chunk size (their scores are left out,
    so they add no gradient): every forward of a batch of ``B`` images then has one shape, which compiled models
    (``cfg.compile``) and CUDA graphs need. A chunk that runs out of device memory (``torch.cuda.OutOfMemoryError``)
    is halved and run again; the model keeps that size for this image size in later calls.
    """
    cfg = cfg or ExplainerSection()
    targets = _check_inputs(images, targets)
    x = images.detach()
    if not x.is_floating_point():
        raise ValueError(f"images must be a float tensor, got {x.dtype}")
    b, c, h, w = x.shape
    if noise is not None:
        if noise.shape[0] != b or noise.ndim != 5 or tuple(noise.shape[2:]) != (c, h, w):
            raise ValueError(f"noise must have shape [B={b}, S, {c}, {h}, {w}], got {tuple(noise.shape)}")
        samples = noise.shape[1]
        noise = noise.to(device=x.device, dtype=x.dtype)
        sigma = None
    else:
        samples = int(cfg.samples)
        sigma = cfg.noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))  # [B]
    rng_device = generator.device if generator is not None else x.device

    # the noise of the images of the current chunk (drawn once, lazily, in image order: a chunk run again after running
    # out of memory gets the same noise); an image's block goes once all its copies are through
    block: dict[int, Tensor] = {}

    def noise_of(i: int, lo: int, hi: int) -> Tensor:
        if noise is not None:
            return noise[i, lo:hi]
        if i not in block:
            eps = torch.randn((samples, c, h, w), generator=generator, device=rng_device, dtype=x.dtype)
            block[i] = eps.to(x.device) * sigma[i]
        return block[i][lo:hi]

    grad_sum = torch.zeros((b, c, h, w), dtype=torch.float32, device=x.device)
    total = b * samples
    fitting = _FITTING_CHUNK.get(model, {}).get((h, w), total)  # what ran out of device memory before, if anything
    cap = min(chunk_size(cfg, x), total, fitting)  # fixed_chunks pads to this: never beyond the copies there are
    amp, use_cl = _fast_path(model, x, cfg)

    def add_chunk(start: int, stop: int) -> None:  # its tensors go with its frame
        pieces, owners = [], []
        for i in range(start // samples, (stop - 1) // samples + 1):
            lo, hi = max(start - i * samples, 0), min(stop - i * samples, samples)
            pieces.append(x[i] + noise_of(i, lo, hi))
            owners.append(torch.full((hi - lo,), i, dtype=torch.long, device=x.device))
        n = stop - start
        if cfg.fixed_chunks and n < cap:  # one input shape for every chunk: the padding rows add no gradient
            pieces.append(x.new_zeros((cap - n, c, h, w)))
        noisy = torch.cat(pieces)
        if use_cl:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        noisy.requires_grad_(True)
        owner = torch.cat(owners)
        with amp:
            outputs = model(noisy)
        selected = _target_scores(outputs[:n], targets[owner], cfg.target).sum()
        (grad,) = torch.autograd.grad(selected, noisy)
        grad_sum.index_add_(0, owner, grad[:n].float())

    with _explaining(model):
        start = 0
        while start < total:
            stop = min(start + cap, total)
            try:
                add_chunk(start, stop)
            except torch.cuda.OutOfMemoryError:
                if cap == 1:
                    raise
                warnings.warn(f"explainer: {type(model).__name__} ran out of device memory with {cap} copies of "
                              f"{h}x{w} per chunk; {cap // 2} from now on", stacklevel=2)
                cap //= 2
                _FITTING_CHUNK.setdefault(model, {})[(h, w)] = cap
            else:
                for i in [i for i in block if (i + 1) * samples <= stop]:
                    del block[i]
                start = stop
                continue
            if x.is_cuda:  # here, not in the except block, whose traceback still holds the failed chunk's tensors
                torch.cuda.empty_cache()
    return (grad_sum / samples).abs().sum(dim=1)


# --------------------------------------------------------------------------------------------------- captum explainers


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    steps: int = 32,
    baseline: float = 0.0,
    cfg: ExplainerSection | None = None,
) -> Tensor:
    """IntegratedGradients maps ``[B, H, W]`` via captum: ``E = Σ_c |IG_c(x)|`` with
    ``IG(x) = (x − x') ⊙ ∫_0^1 ∂ f_t(x' + α (x − x')) / ∂x dα`` (Gauss-Legendre, ``steps`` points), baseline
    ``x'`` the constant image ``baseline``. ``f_t`` as in :func:`smoothgrad`. At most ``cfg.batch_cap`` samples
    (images × steps) per forward pass: images go to captum in groups of ``batch_cap // 2`` with
    ``internal_batch_size = batch_cap`` (captum needs at least 2 steps per internal batch)."""
    from captum.attr import IntegratedGradients

    cfg = cfg or ExplainerSection()
    targets = _check_inputs(images, targets)
    cap = chunk_size(cfg, images)
    maps = []
    with _explaining(model):
        ig = IntegratedGradients(_score_function(model, cfg.target))
        group = max(1, cap // 2)
        for chunk, tgt in zip(images.split(group), targets.split(group)):
            attr = ig.attribute(chunk.detach(), baselines=float(baseline), target=tgt, n_steps=int(steps),
                                internal_batch_size=max(cap, 2 * chunk.shape[0]))
            maps.append(attr.abs().sum(dim=1))
    return torch.cat(maps)


def default_gradcam_layer(model: nn.Module) -> nn.Module:
    """The layer GradCAM attributes to: the last block of a CNN that contains a ``Conv2d``.

    torchvision ResNet/ResNeXt/Wide-ResNet: ``model.layer4``; models with a ``features`` Sequential
    (MobileNet, EfficientNet, DenseNet, VGG): its last child containing a Conv2d (``features[-1]`` for
    MobileNet/EfficientNet); otherwise the last ``nn.Conv2d`` of the model. No Conv2d → ``ValueError``.
    """

    def has_conv(m: nn.Module) -> bool:
        return any(isinstance(s, nn.Conv2d) for s in m.modules())

    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Module) and has_conv(layer4):
        return layer4
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        blocks = [m for m in features.children() if has_conv(m)]
        if blocks:
            return blocks[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"GradCAM needs a convolutional model; {type(model).__name__} has no Conv2d layer")
    return convs[-1]


def gradcam(
    model: nn.Module,
    layer: nn.Module | None,
    images: Tensor,
    targets: Tensor,
    cfg: ExplainerSection | None = None,
) -> Tensor:
    """GradCAM maps ``[B, H, W]`` via captum ``LayerGradCam`` on ``layer`` (default :func:`default_gradcam_layer`):

    ``E = ReLU(Σ_k α_k A_k)``, ``α_k = mean_{i,j} ∂ f_t / ∂A_k[i, j]`` for the layer's activations ``A``,
    then bilinearly upsampled to ``H×W`` with ``LayerAttribution.interpolate``. ``f_t`` as in :func:`smoothgrad`.
    At most ``cfg.batch_cap`` images per forward pass.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    cfg = cfg or ExplainerSection()
    targets = _check_inputs(images, targets)
    layer = layer if layer is not None else default_gradcam_layer(model)
    size = tuple(images.shape[-2:])
    maps = []
    with _explaining(model):
        cam = LayerGradCam(_score_function(model, cfg.target), layer)
        cap = chunk_size(cfg, images)
        for chunk, tgt in zip(images.split(cap), targets.split(cap)):
            attr = cam.attribute(chunk.detach(), target=tgt, relu_attributions=True)
            up = LayerAttribution.interpolate(attr, size, interpolate_mode="bilinear")
            maps.append(up.sum(dim=1).float())
    return torch.cat(maps)


# --------------------------------------------------------------------------------------------------- dispatch


def explain(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    cfg: ExplainerSection | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Saliency maps ``[B, H, W]`` of one model with ``cfg.method``, for the targets of :func:`targets_for`."""
    cfg = cfg or ExplainerSection()
    targets = targets_for(model, images, labels, cfg)
    if cfg.method == "smoothgrad":
        return smoothgrad(model, images, targets, cfg, generator=generator)
    if cfg.method == "integrated_gradients":
        return integrated_gradients(model, images, targets, steps=cfg.ig_steps, cfg=cfg)
    return gradcam(model, None, images, targets, cfg)


def explain_ensemble(
    models: Sequence[nn.Module],
    images: Tensor,
    labels: Tensor | None,
    cfg: ExplainerSection | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Explain ``images`` with each of the ``M`` models and combine (PSSL Eqs. 1-2).

    Returns ``(per_model [M, B, H, W], ensemble [B, H, W], deciles uint8 [B, H, W])`` with
    ``ensemble = (1/M) Σ_m minmax(E_m)`` (:func:`ensemble_mean`) and ``deciles = ⌊10·Z/N⌋`` of it
    (:func:`deciles`). With ``target_from="prediction"`` each model explains its own prediction.
    """
    if len(models) == 0:
        raise ValueError("explain_ensemble needs at least one model")
    per_model = torch.stack([explain(m, images, labels, cfg, generator=generator) for m in models])
    scores = ensemble_mean(per_model)
    return per_model, scores, deciles(scores)

