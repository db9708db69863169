"""SSA-Seg's losses (methods.md §2.4, the official code's semantics) and the training helper every method uses.

With an :class:`~rayseg.models.ssa.SSAClassifier`, one batch gives eight terms, each added with weight 1 (the
weights 10 and 0.4 live inside the semantic and spatial terms)::

    L = CE(U(O), y) + CE(U(M_c), y) + CE(U(O^T), y) + L_rd(O, sg(O^T)) + Dice(U(O)) + Dice(U(O^T)) + L_sd + L_pd

``U`` = bilinear upsampling to the label size with align_corners=True (as in the official code); ``L_rd``, ``L_sd``
and ``L_pd`` work at the decoder resolution. :func:`segmentation_losses` returns these terms as a dict (the
engine minimises their sum and logs each); with a plain 1x1 classifier it returns only the main term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rayseg.ignore import IGNORE_INDEX
from rayseg.models.segmentation import SegmentationModel
from rayseg.models.ssa import SCALE, SSAClassifier, SSAOutput, resize_labels

__all__ = [
    "MaskDiceLoss",
    "ResponseDistillationLoss",
    "SSALoss",
    "SemanticDistillationLoss",
    "SpatialDistillationLoss",
    "label_boundaries",
    "segmentation_losses",
]


def upsample(logits: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``U(·)``: bilinear, align_corners=True, to ``size``."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)


def label_boundaries(labels: torch.Tensor, border: int = 6) -> torch.Tensor:
    """Boundary band ``E ∈ {0, 1}`` (float ``B x h x w``) of an int label map ``B x h x w``; works for any size.

    The official code runs OpenCV Canny on the uint8 label image (thresholds 0.1/0.2: every label change is an
    edge; non-maximum suppression keeps a one-pixel line), zeroes a ``border``-pixel frame, then dilates with a
    3x3 kernel. Here: a pixel is an edge when its label differs from its right or lower neighbour (the thin line
    on the first side of each change; the ignore label takes part like any label); edges within ``border``
    pixels of the image border are removed; then a 3x3 max-pool dilates. A map no larger than ``2·border`` in
    either side has no boundary pixels (the official helper fails below 12x12 and gives none at 12x12).
    """
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    edge[..., :, :-1] |= labels[..., :, :-1] != labels[..., :, 1:]
    edge[..., :-1, :] |= labels[..., :-1, :] != labels[..., 1:, :]
    if border > 0:
        edge[..., :border, :] = False
        edge[..., -border:, :] = False
        edge[..., :, :border] = False
        edge[..., :, -border:] = False
    return F.max_pool2d(edge.float().unsqueeze(-3), 3, stride=1, padding=1).squeeze(-3)


def _valid_onehot(labels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """``B x K x ...`` float one-hot of ``labels`` (``B x ...``), all zeros at ignored pixels."""
    valid = labels != ignore_index
    onehot = F.one_hot(torch.where(valid, labels, 0), num_classes).float() * valid.unsqueeze(-1)
    return onehot.movedim(-1, 1)


class ResponseDistillationLoss(nn.Module):
    """Boundary- and category-aware response-domain distillation ``L_rd`` (student ``O`` vs teacher ``O^T``).

    At the logits' resolution, with ``y`` the nearest-resized label, ``q_p = sm_K(sg(O^T_p))`` and ``λ = smoothing``::

        t_p = λ q_p + (1 − λ) onehot(y_p)                    smoothed target
        ℓ_p = −Σ_k t_pk log sm_K(O_p)_k                      per-pixel soft cross-entropy
        e_p = −Σ_k q_pk log(q_pk + 1e-12)                    teacher entropy (uncertain pixels weigh more)
        L_k = ½ [ Σ_{Ω_k∩E} e ℓ / (Σ_{Ω_k∩E} e + 1e-12) + Σ_{Ω_k∖E} e ℓ / (Σ_{Ω_k∖E} e + 1e-12) ]
        L_rd = mean of L_k over the classes k present in the batch (uniform class weights)

    ``Ω_k`` = the pixels labelled k (ignored pixels belong to no class), ``E`` = :func:`label_boundaries` with
    ``border``. A class without boundary pixels still gets the factor ½. No valid pixel at all gives 0.
    """

    def __init__(self, smoothing: float = 0.5, border: int = 6, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.smoothing, self.border, self.ignore_index = float(smoothing), int(border), int(ignore_index)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        y = resize_labels(labels, logits.shape[-2:])
        onehot = _valid_onehot(y, logits.shape[1], self.ignore_index)         # B x K x h x w (Ω_k)
        q = teacher_logits.detach().softmax(dim=1)
        target = self.smoothing * q + (1.0 - self.smoothing) * onehot
        loss = -(target * logits.log_softmax(dim=1)).sum(dim=1, keepdim=True)  # ℓ, B x 1 x h x w
        entropy = -(q * torch.log(q + 1e-12)).sum(dim=1, keepdim=True)         # e (0 off Ω by the masks below)
        edge = label_boundaries(y, self.border).unsqueeze(1)                   # E, B x 1 x h x w
        halves = []
        for region in (onehot * edge, onehot * (1.0 - edge)):                 # Ω_k ∩ E, Ω_k ∖ E
            weight = entropy * region
            halves.append((weight * loss).sum(dim=(0, 2, 3)) / (weight.sum(dim=(0, 2, 3)) + 1e-12))
        per_class = 0.5 * (halves[0] + halves[1])                              # L_k, K
        present = onehot.sum(dim=(0, 2, 3)) > 0
        if not present.any():
            return logits.sum() * 0.0
        return per_class[present].mean()


class MaskDiceLoss(nn.Module):
    """Mask2Former-style Dice over the (image, class) pairs present in the labels (``L_dice``).

    For image b and class k present in ``y_b`` (ignore excluded): ``m = σ(O_bk)`` over all pixels,
    ``t = [y_b = k]``::

        dice_bk = 1 − (2 Σ m t + 1) / (Σ m + Σ t + 1)
        L_dice  = Σ_{(b,k)} dice_bk / max(P̄, 1)

    ``P̄`` = the number of pairs, averaged over the workers when ``torch.distributed`` is initialised (each worker
    divides its own sum by the same mean count). Logits and labels share one resolution.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = _valid_onehot(labels, logits.shape[1], self.ignore_index).flatten(2)  # B x K x HW
        mask = logits.sigmoid().flatten(2)
        dice = 1.0 - (2.0 * (mask * target).sum(-1) + 1.0) / (mask.sum(-1) + target.sum(-1) + 1.0)  # B x K
        present = target.sum(-1) > 0
        return (dice * present).sum() / self.num_pairs(present)

    @staticmethod
    def num_pairs(present: torch.Tensor) -> torch.Tensor:
        """``max(P̄, 1)``: the pair count, all-reduced and averaged over the workers when distributed."""
        count = present.sum().float().detach()
        if dist.is_available() and dist.is_initialized():
            count = count.clone()
            dist.all_reduce(count)
            count = count / dist.get_world_size()
        return count.clamp_min(1.0)


class SemanticDistillationLoss(nn.Module):
    """Semantic-domain distillation ``L_sd`` on the inter-class relations of the prototypes.

    For a prototype set ``X`` (``B x K x C``): ``R(X) = sm_row(15 · n(X) · sg(n(X))ᵀ)`` (``B x K x K``, the right
    factor detached). With the student's per-image ``S^p`` and the teacher's ``S^g``::

        Δ    = (R(S^p) − R(sg(S^g))) ⊙ (1 − I)
        L_sd = w · mean_{b,k} Σ_j max(Δ_bkj, 0)               w = 10

    a one-sided hinge: only relations where the student finds a class more similar than the teacher does count.
    """

    def __init__(self, weight: float = 10.0, scale: float = SCALE):
        super().__init__()
        self.weight, self.scale = float(weight), float(scale)

    def relation(self, prototypes: torch.Tensor) -> torch.Tensor:
        """``R(X)``, the row-softmax of scaled cosine similarities with a detached right factor."""
        unit = F.normalize(prototypes, dim=-1)
        return (self.scale * unit @ unit.detach().transpose(-1, -2)).softmax(dim=-1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        k = student.shape[-2]
        off_diagonal = 1.0 - torch.eye(k, device=student.device, dtype=student.dtype)
        delta = (self.relation(student) - self.relation(teacher.detach())) * off_diagonal
        return self.weight * delta.clamp_min(0.0).sum(dim=-1).mean()


class SpatialDistillationLoss(nn.Module):
    """Spatial-domain distillation ``L_pd``: position prototypes as distributions over the channels.

    ``L_pd = w · mean_{b,k} [ −Σ_c sm_C(sg(P^g_bk))_c · log sm_C(P^p_bk)_c ]``, ``w = 0.4``, temperature 1.
    """

    def __init__(self, weight: float = 0.4):
        super().__init__()
        self.weight = float(weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        soft = teacher.detach().softmax(dim=-1)
        return self.weight * -(soft * student.log_softmax(dim=-1)).sum(dim=-1).mean()


class SSALoss(nn.Module):
    """All SSA terms for one :class:`SSAOutput`; ``forward`` returns them by name (their sum is the loss).

    Names: ``<main_name>`` (``ce_fn(U(O), y)``, the method's own criterion), ``coarse_ce`` and ``teacher_ce``
    (plain CE with ignore, as the official code), ``distill_response``, ``dice``, ``teacher_dice``,
    ``distill_semantic``, ``distill_spatial``. Computed in float32 with autocast off.
    """

    def __init__(self, smoothing: float = 0.5, edge_border: int = 6, semantic_weight: float = 10.0,
                 spatial_weight: float = 0.4, dice_weight: float = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index, self.dice_weight = int(ignore_index), float(dice_weight)
        self.response = ResponseDistillationLoss(smoothing, edge_border, ignore_index)
        self.dice = MaskDiceLoss(ignore_index)
        self.semantic = SemanticDistillationLoss(semantic_weight)
        self.spatial = SpatialDistillationLoss(spatial_weight)

    @classmethod
    def from_config(cls, section, ignore_index: int = IGNORE_INDEX) -> SSALoss:
        """From the ``ssa`` config section (:class:`rayseg.config.SSASection`)."""
        return cls(section.smoothing, section.edge_border, section.semantic_weight, section.spatial_weight,
                   section.dice_weight, ignore_index)

    def forward(self, out: SSAOutput, labels: torch.Tensor, ce_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                main_name: str = "ce") -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=labels.device.type, enabled=False):
            logits, coarse, teacher = out.logits.float(), out.coarse.float(), out.teacher_logits.float()
            size = labels.shape[-2:]
            logits_up, teacher_up = upsample(logits, size), upsample(teacher, size)
            ce = lambda x: F.cross_entropy(x, labels, ignore_index=self.ignore_index)
            return {
                main_name: ce_fn(logits_up, labels),
                "coarse_ce": ce(upsample(coarse, size)),
                "teacher_ce": ce(teacher_up),
                "distill_response": self.response(logits, teacher, labels),
                "dice": self.dice_weight * self.dice(logits_up, labels),
                "teacher_dice": self.dice_weight * self.dice(teacher_up, labels),
                "distill_semantic": self.semantic(out.semantic.float(), out.teacher_semantic.float()),
                "distill_spatial": self.spatial(out.spatial.float(), out.teacher_spatial.float()),
            }


def segmentation_losses(
    model: SegmentationModel,
    image: torch.Tensor,
    mask: torch.Tensor,
    ce_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    main_name: str = "ce",
    ssa_loss: SSALoss | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms of a segmentation model on a labelled batch.

    Plain classifier: ``{main_name: ce_fn(model(image), mask)}``. SSA classifier: the student/teacher forward and
    every :class:`SSALoss` term (``ssa_loss``, default weights when None), the main one named ``main_name``.
    """
    if not isinstance(model.classifier, SSAClassifier):
        return {main_name: ce_fn(model(image).float(), mask)}
    feat = model.forward_features(image)["decoder"]
    out = model.classifier.forward_train(feat, mask)
    return (ssa_loss if ssa_loss is not None else SSALoss())(out, mask, ce_fn, main_name)
