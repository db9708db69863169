"""Segmentation metrics from a confusion matrix that can be summed across DDP workers.

``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p``; ignore pixels are left out.
Per class: ``IoU_k = TP_k / (TP_k + FP_k + FN_k)``. A class with no pixel in the labels and none in the
predictions has an undefined IoU (0/0): it is reported as NaN and left out of the mean, the convention of
torchvision's reference scripts and MMSegmentation. Pixel accuracy = ``trace / sum``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from rayseg.ignore import IGNORE_INDEX
from rayseg.tables import format_table


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prediction`` (class ids, any shape) against ``target`` (same shape, ignore allowed)."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        keep = target != self.ignore_index
        t = target[keep].to(torch.int64)
        p = prediction[keep].to(torch.int64)
        if t.numel() and (int(t.max()) >= self.num_classes or int(t.min()) < 0):
            raise ValueError(f"target has label ids outside 0..{self.num_classes - 1} (other than {self.ignore_index})")
        counts = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over all workers of the default process group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self, class_names: list[str] | None = None) -> dict:
        m = self.matrix.double().cpu()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        valid = ~torch.isnan(iou)
        total = m.sum()
        names = class_names or [str(i) for i in range(self.num_classes)]
        return {
            "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
            "per_class_iou": {names[k]: (None if math.isnan(v) else float(v)) for k, v in enumerate(iou.tolist())},
            "num_pixels": int(total),
            "confusion_matrix": self.matrix.cpu().tolist(),  # rows: true class, columns: predicted class
        }


def format_metrics_table(metrics: dict) -> str:
    """Plain-text table of per-class IoU, mIoU and pixel accuracy."""
    rows = [(name, "-" if v is None else f"{100 * v:.2f}") for name, v in metrics["per_class_iou"].items()]
    rows += [None, ("mIoU", f"{100 * metrics['miou']:.2f}"), ("pixel acc", f"{100 * metrics['pixel_accuracy']:.2f}")]
    return format_table(("class", "IoU"), rows, "<>")


def confusion_matrix_png(metrics: dict, dpi: int = 100) -> bytes:
    """The confusion matrix of ``metrics`` as a PNG: rows (true classes) normalised to sum 1, class names on the
    axes (up to 40 classes; beyond, the indices only)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = torch.tensor(metrics["confusion_matrix"], dtype=torch.float64)
    rows = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    k = rows.shape[0]
    side = min(4 + 0.25 * k, 20)
    fig = Figure(figsize=(side, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rows.numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"confusion (rows normalised), mIoU {100 * metrics['miou']:.2f}")
    if k <= 40:
        names = list(metrics["per_class_iou"])
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()
