"""The one ignore value of rayseg's label masks, for any number of classes.

Every mask rayseg holds in memory (readers, pseudo labels, crop padding, mixing, losses, metrics, MDP's
concatenated label spaces) marks the pixels that take no part with ``IGNORE_INDEX = -1``. No class id is negative,
so the value never collides with a class, for K = 21, 1000 (PSSL on ImageNet), the few hundred of MDP's union or
65,535. Datasets write "ignore" into their 8-bit mask files as ``FILE_IGNORE = 255`` (and into 16-bit mask files, which
label spaces beyond 255 classes need, as ``FILE_IGNORE_16 = 65535``); the readers map it (and, with
``data.label_map``, every unmapped raw value) to ``IGNORE_INDEX`` when they load a mask.
"""

IGNORE_INDEX = -1
FILE_IGNORE = 255
FILE_IGNORE_16 = 65535

__all__ = ["FILE_IGNORE", "FILE_IGNORE_16", "IGNORE_INDEX"]
