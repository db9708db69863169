"""SSA-Seg's semantic- and spatial-adaptive pixel classifier (methods.md §2.1-2.3, official code's semantics).

:class:`SSAClassifier` replaces the final 1x1 conv classifier of any decode head. It reads the decoder feature
``F`` (``B x C x h x w``) and predicts ``B x K x h x w`` logits:

1. coarse mask ``M_c = S ⋆ Dropout(F) + bias`` (``S`` = the 1x1 classifier weight, the fixed prototypes);
2. spatial features ``P_f = PE(F)`` (depthwise 3x3 conv, conditional position encoding);
3. semantic prototypes ``S^p_bk = φ_sem([c_bk ; S_k])`` from the class centres
   ``c_bk = Σ_p sm_K(M_c)_bkp F_bp / (Σ_p sm_K(M_c)_bkp + 1e-12)``;
4. spatial prototypes ``P^p_bk = φ_pos([Pb_k ; g_bk])`` with ``g_bk = Σ_p sm_N(M_c)_bkp P_f,bp`` (softmax over
   the N positions) and ``Pb`` the learnt position basis;
5. logits ``O_bkp = 15 · cos(F_bp + P_f,bp, W_c(S^p_bk + P^p_bk))``.

Dropout applies to the coarse-mask path only; ``F`` itself feeds the centres and the final logits. (Build the
decoder without its own trailing dropout: :func:`rayseg.models.build_model` does so for ``classifier="ssa"``.)

In training, :meth:`SSAClassifier.forward_train` also runs the teacher, which has the same structure but builds
its prototypes from the ground-truth mask (its own ``φ_sem^T``, ``φ_pos^T``, ``W_c^T``; shared ``S``, ``PE``,
``Pb``). :meth:`SSAClassifier.forward` (inference, and what ``SegmentationModel`` calls) never touches the teacher.

The classifier's 1x1 weight and bias are the parameters ``weight`` (``K x C x 1 x 1``) and ``bias`` (``K``), named
as in a plain ``nn.Conv2d`` classifier, so a plain model's classifier loads into ``S`` when the classes match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayseg.ignore import IGNORE_INDEX

SCALE = 15.0  # cosine-logit scale, hard-coded in the official code


def fuse_mlp(channels: int) -> nn.Sequential:
    """``Linear(2C -> C/2, no bias) -> ReLU -> Linear(C/2 -> C)``: fuses an image centre with a prototype."""
    return nn.Sequential(
        nn.Linear(2 * channels, channels // 2, bias=False),
        nn.ReLU(inplace=True),
        nn.Linear(channels // 2, channels),
    )


def cosine_logits(pixels: torch.Tensor, keys: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """``scale · cos(pixels_bp, keys_bk)``: pixels ``B x C x h x w``, keys ``B x K x C`` -> ``B x K x h x w``."""
    return scale * torch.einsum("bchw,bkc->bkhw", F.normalize(pixels, dim=1), F.normalize(keys, dim=-1))


def resize_labels(labels: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Nearest resize of an int ``B x H x W`` label map to ``size`` (as the official code does)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


@dataclass
class SSAOutput:
    """Everything the SSA losses need from one training forward (all at the decoder resolution ``h x w``)."""

    logits: torch.Tensor            # O,   B x K x h x w (student, the inference output)
    coarse: torch.Tensor            # M_c, B x K x h x w
    teacher_logits: torch.Tensor    # O^T, B x K x h x w
    semantic: torch.Tensor          # S^p, B x K x C (per image)
    teacher_semantic: torch.Tensor  # S^g, B x K x C (one batch-level set, repeated over the batch)
    spatial: torch.Tensor           # P^p, B x K x C
    teacher_spatial: torch.Tensor   # P^g, B x K x C


class SSAClassifier(nn.Module):
    """Semantic- and spatial-adaptive classifier over decoder features (see the module docstring).

    ``forward(F)`` is the inference path (student only); ``forward_train(F, labels)`` adds the teacher branch
    and returns an :class:`SSAOutput`. ``labels`` are ``B x H x W`` int64 at any resolution (``IGNORE_INDEX`` = ignore);
    they are nearest-resized to the feature size.
    """

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.1, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        if channels < 2:
            raise ValueError(f"SSAClassifier needs at least 2 channels, got {channels}")
        self.channels, self.num_classes, self.ignore_index = int(channels), int(num_classes), int(ignore_index)
        # S and its bias: the baseline 1x1 classifier (coarse mask), keys as in nn.Conv2d
        self.weight = nn.Parameter(torch.empty(num_classes, channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(num_classes))
        self.dropout = nn.Dropout(dropout)
        self.position_encoding = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)  # PE
        self.position_basis = nn.Embedding(num_classes, channels)                             # Pb, N(0, 1)
        self.semantic_mlp = fuse_mlp(channels)                                                 # φ_sem
        self.spatial_mlp = fuse_mlp(channels)                                                  # φ_pos
        self.key_proj = nn.Linear(channels, channels, bias=False)                              # W_c
        self.teacher_semantic_mlp = fuse_mlp(channels)                                         # φ_sem^T
        self.teacher_spatial_mlp = fuse_mlp(channels)                                          # φ_pos^T
        self.teacher_key_proj = nn.Linear(channels, channels, bias=False)                      # W_c^T
        self.reset_classifier()

    def reset_classifier(self) -> None:
        """Initialise ``weight``/``bias`` as ``nn.Conv2d`` does (so S starts like the plain classifier)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1.0 / math.sqrt(self.channels)
        nn.init.uniform_(self.bias, -bound, bound)

    @property
    def prototypes(self) -> torch.Tensor:
        """The fixed semantic prototypes ``S`` (``K x C``)."""
        return self.weight.flatten(1)

    # ------------------------------------------------------------------------------------------- student

    def coarse_mask(self, feat: torch.Tensor) -> torch.Tensor:
        """``M_c = S ⋆ Dropout(F) + bias``."""
        return F.conv2d(self.dropout(feat), self.weight, self.bias)

    def student(self, feat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(O, M_c, S^p, P^p, P_f)`` for decoder features ``F``."""
        b = feat.shape[0]
        coarse = self.coarse_mask(feat)                                     # B x K x h x w
        pos = self.position_encoding(feat)                                  # P_f, B x C x h x w
        scores = coarse.flatten(2)                                          # B x K x N
        # SEPA: per-image class centres under a softmax over classes
        assign = scores.softmax(dim=1)
        centres = torch.einsum("bkn,bcn->bkc", assign, feat.flatten(2)) / (assign.sum(-1, keepdim=True) + 1e-12)
        fixed = self.prototypes.unsqueeze(0).expand(b, -1, -1)
        semantic = self.semantic_mlp(torch.cat([centres, fixed], dim=-1))  # S^p: centre first, S second
        # SPPA: per-class spatial centres under a softmax over positions
        attention = scores.softmax(dim=-1)
        spatial_centres = torch.einsum("bkn,bcn->bkc", attention, pos.flatten(2))
        basis = self.position_basis.weight.unsqueeze(0).expand(b, -1, -1)
        spatial = self.spatial_mlp(torch.cat([basis, spatial_centres], dim=-1))  # P^p: basis first, centre second
        logits = cosine_logits(feat + pos, self.key_proj(semantic + spatial))
        return logits, coarse, semantic, spatial, pos

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """Inference logits ``O`` (``B x K x h x w``); the teacher is never used here."""
        return self.student(feat)[0]

    # ------------------------------------------------------------------------------------------- teacher

    def teacher(self, feat: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(O^T, S^g, P^g)`` from the ground truth ``labels`` (``B x H x W``, nearest-resized to ``h x w``).

        ``c^g_k``: mean of ``F`` over the pixels of class k in the whole (per-worker) batch, ``sg(S_k)`` for absent
        classes; ``S^g = φ_sem^T([c^g ; S])`` shared by all images. ``g^g_bk``: mean of ``P_f`` over the pixels of
        class k in image b, ``sg(Pb_k)`` when absent; ``P^g = φ_pos^T([g^g ; Pb])``.
        """
        b = feat.shape[0]
        y = resize_labels(labels, feat.shape[-2:]).flatten(1)               # B x N
        valid = y != self.ignore_index
        onehot = F.one_hot(torch.where(valid, y, 0), self.num_classes).float() * valid.unsqueeze(-1)  # B x N x K
        fixed = self.prototypes                                             # K x C
        basis = self.position_basis.weight                                  # K x C
        # semantic GT centre: batch level
        count = onehot.sum(dim=(0, 1)).unsqueeze(-1)                        # K x 1
        total = torch.einsum("bnk,bcn->kc", onehot, feat.flatten(2))
        centre = torch.where(count > 0, total / count.clamp_min(1), fixed.detach())
        semantic = self.teacher_semantic_mlp(torch.cat([centre, fixed], dim=-1)).unsqueeze(0).expand(b, -1, -1)
        # spatial GT centre: per image
        count_b = onehot.sum(dim=1).unsqueeze(-1)                           # B x K x 1
        total_b = torch.einsum("bnk,bcn->bkc", onehot, pos.flatten(2))
        spatial_centre = torch.where(count_b > 0, total_b / count_b.clamp_min(1), basis.detach().unsqueeze(0))
        spatial = self.teacher_spatial_mlp(torch.cat([spatial_centre, basis.unsqueeze(0).expand(b, -1, -1)], -1))
        logits = cosine_logits(feat + pos, self.teacher_key_proj(semantic + spatial))
        return logits, semantic, spatial

    def forward_train(self, feat: torch.Tensor, labels: torch.Tensor) -> SSAOutput:
        """Student and teacher outputs for the SSA losses (:mod:`rayseg.methods.ssa_losses`)."""
        logits, coarse, semantic, spatial, pos = self.student(feat)
        teacher_logits, teacher_semantic, teacher_spatial = self.teacher(feat, pos, labels)
        return SSAOutput(logits, coarse, teacher_logits, semantic, teacher_semantic, spatial, teacher_spatial)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_classes={self.num_classes}, scale={SCALE}"
