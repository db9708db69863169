"""Progress lines and TensorBoard scalars, written by rank 0 only."""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict

import torch


class StepMeter:
    """Averages loss terms between progress lines and measures images/s over the same window.

    Loss tensors are accumulated on their device and read (one synchronisation) only when a line is printed.
    """

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
        self.steps = 0
        self.images = 0
        self.start = time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], batch_size: int) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums[k].to(v.device) + v.detach().float()
        self.steps += 1
        self.images += batch_size

    def flush(self) -> tuple[dict[str, float], float]:
        """Mean of each term and the global images/s since the last flush; resets the window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        means = {k: float(v) / max(self.steps, 1) for k, v in self.sums.items()}
        rate = self.images * self.world_size / elapsed
        self.sums.clear()
        self.steps = self.images = 0
        self.start = time.perf_counter()
        return means, rate


class RankZeroLogger:
    """Prints progress, appends it with a timestamp to ``log_file`` (the run folder's ``log.txt``) and writes
    TensorBoard scalars when ``enabled`` (rank 0); silent otherwise. The event file is opened with the first scalar,
    so a run that has nothing to do leaves none behind."""

    def __init__(self, enabled: bool, tb_dir: str | None, log_file: str | os.PathLike | None = None):
        self.enabled, self.tb_dir, self.log_file = enabled, tb_dir, log_file
        self.writer = None

    def print(self, text: str, to_log_file: bool = True) -> None:
        # Straight to stdout: Ray Train V2 patches print() in workers to also go through the root logger,
        # which would show every line twice.
        if self.enabled:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            if self.log_file and to_log_file:
                with open(self.log_file, "a") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def _tensorboard(self):
        if not (self.enabled and self.tb_dir):
            return None
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=self.tb_dir)
        return self.writer

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        writer = self._tensorboard()
        for k, v in values.items() if writer is not None else ():
            writer.add_scalar(prefix + k, v, step)

    def images(self, tag: str, images: list, step: int) -> None:
        """uint8 ``H x W x 3`` arrays as ``<tag>/<i>``."""
        writer = self._tensorboard()
        for i, image in enumerate(images if writer is not None else ()):
            writer.add_image(f"{tag}/{i}", image, step, dataformats="HWC")

    def hparams(self, params: dict, metrics: dict[str, float]) -> None:
        """The run's hyperparameters with its final metrics (TensorBoard's HPARAMS tab), in the run's own event
        folder."""
        writer = self._tensorboard()
        if writer is not None:
            writer.add_hparams(params, metrics, run_name=".")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
