"""Errors raised by the data readers."""

from __future__ import annotations

import os

__all__ = ["BadSampleError"]


class BadSampleError(ValueError):
    """A sample that cannot be used (unreadable image, wrong mask size, bad labels).

    The message always starts with the offending file path, so a user-facing report is one clear line::

        data/JPEGImages/x.jpg: cannot decode image (image file is truncated)
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

