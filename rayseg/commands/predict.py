"""``rayseg predict``: masks, overlays (and probabilities) of a trained export for one image or a folder
(:mod:`rayseg.engine.prediction`). The ``predict`` and ``eval`` sections configure it."""

from __future__ import annotations

import argparse

from rayseg.commands.args import resolve


def run(args: argparse.Namespace) -> int:
    cfg = resolve(args)
    cfg.predict.check_inputs()
    from rayseg.engine.prediction import predict

    summary = predict(cfg.predict, cfg.eval, args.address)
    print(f"[rayseg] predicted {summary['predicted']} of {summary['images']} images ({summary['errors']} unreadable) "
          f"-> {summary['output']}")
    return 0
