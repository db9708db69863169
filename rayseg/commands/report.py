"""`rayseg report`: the transfer table and chart — fine-tune mIoU per pre-training start and head, over seeds.

Input: the run folders under one storage root (a path or an object-store URI). Every training run writes
``tags.json`` (``run.tags`` over defaults, :meth:`rayseg.config.Config.tags`)::

    {"command": "finetune", "method": "supervised", "head": "linear", "start": "pretrain-pssl-1a2b3c4d", "seed": 0,
     ...any run.tags}

Fine-tunes (``command`` finetune, or no ``command``: older runs and hand-written tags) are grouped by the two tag
keys of ``--by`` (default ``start,head``: rows and bars), with the seeds as replicates. Runs without
``metrics.json`` (not finished) are listed as missing, not silently dropped. Output: a text table of mean ±
sample standard deviation of the mIoU over seeds (and the number of seeds), ``report.csv`` with one row per run,
and ``report.png``, a grouped bar chart (one group per row value, one bar per column value, error bars = standard
deviation, dots = seeds, the mean written on each bar, the title given).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
from dataclasses import dataclass

from rayseg import storage
from rayseg.config import ConfigError
from rayseg.tables import format_table

__all__ = ["FineTune", "ReportRow", "collect_runs", "read_fine_tunes", "render_chart", "summarise", "format_report",
           "write_report"]

HEAD_ORDER = ("linear", "ssa")


@dataclass
class ReportRow:
    start: str
    head: str
    seed: str
    miou: float | None  # None: the run has no metrics.json yet
    run_dir: str


@dataclass
class FineTune:
    tags: dict
    miou: float | None  # None: the run has no metrics.json yet
    run_dir: str


def read_fine_tunes(root: str | os.PathLike) -> list[FineTune]:
    """Every fine-tune ``<root>/*/tags.json`` run (``command`` finetune, or none: older runs and hand-written
    tags), with its mIoU (None when ``metrics.json`` is missing). ``root`` is a path or an object-store URI."""
    root = storage.absolute(root)
    if not storage.is_dir(root):
        raise FileNotFoundError(f"{root}: folder not found")
    runs = []
    for entry in storage.list_dir(root):
        run_dir = storage.join(root, entry)
        tags_file = storage.join(run_dir, "tags.json")
        if not storage.is_file(tags_file):
            continue
        tags = json.loads(storage.read_text(tags_file))
        if tags.get("command", "finetune") != "finetune":
            continue
        if "seed" not in tags:
            raise ConfigError(f"{tags_file}: missing seed")
        metrics_file = storage.join(run_dir, "metrics.json")
        miou = json.loads(storage.read_text(metrics_file))["miou"] if storage.is_file(metrics_file) else None
        runs.append(FineTune(tags, miou, run_dir))
    return runs


def collect_runs(root: str | os.PathLike, by: tuple[str, str] = ("start", "head")) -> list[ReportRow]:
    """Every fine-tune run under ``root`` (:func:`read_fine_tunes`) as a row: the values of its tags ``by``
    (``-`` where a run lacks one), its seed and mIoU."""
    rows = []
    for run in read_fine_tunes(root):
        row, column = (str(run.tags.get(key, "-")) for key in by)
        rows.append(ReportRow(row, column, str(run.tags["seed"]), run.miou, run.run_dir))
    return rows


def _ordered(values, preferred=()) -> list:
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def summarise(rows: list[ReportRow], start_order: tuple[str, ...] = ()) -> list[dict]:
    """One entry per (start, head) in ``start_order`` then first-seen order: mean, std (sample; 0 for one seed),
    seeds, missing runs."""
    starts = _ordered([r.start for r in rows], start_order)
    heads = _ordered([r.head for r in rows], HEAD_ORDER)
    out = []
    for start in starts:
        for head in heads:
            group = [r for r in rows if r.start == start and r.head == head]
            if not group:
                continue
            values = [r.miou for r in group if r.miou is not None]
            mean = sum(values) / len(values) if values else math.nan
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            out.append({"start": start, "head": head, "mean": mean, "std": std, "seeds": len(values),
                        "values": values, "missing": len(group) - len(values)})
    return out


def format_report(summary: list[dict], by: tuple[str, str] = ("start", "head")) -> str:
    heads = _ordered([s["head"] for s in summary], HEAD_ORDER)
    starts = _ordered([s["start"] for s in summary])
    rows = []
    for start in starts:
        cells = [start]
        for head in heads:
            s = next((s for s in summary if s["start"] == start and s["head"] == head), None)
            if s is None or not s["seeds"]:
                cells.append("-")
                continue
            text = f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['seeds']})"
            if s["missing"]:
                text += f" +{s['missing']} missing"
            cells.append(text)
        rows.append(cells)
    if by == ("start", "head"):
        header = ["pre-training", *(f"{h} head (mIoU %)" for h in heads)]
    else:
        header = [by[0], *(f"{by[1]}={h} (mIoU %)" for h in heads)]
    return format_table(header, rows, "<" + ">" * len(heads))


def render_chart(summary: list[dict], path: str | os.PathLike, title: str = "",
                 by: tuple[str, str] = ("start", "head")) -> str:
    """Grouped bar chart of mean mIoU (%) per row value and column value (``by``), with std error bars, one dot
    per seed and the mean written on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = _ordered([s["head"] for s in summary], HEAD_ORDER)
    starts = _ordered([s["start"] for s in summary])
    width = 0.8 / max(1, len(heads))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(starts) + 2), 4.0), dpi=100)
    for k, head in enumerate(heads):
        xs, means, stds = [], [], []
        for i, start in enumerate(starts):
            s = next((s for s in summary if s["start"] == start and s["head"] == head and s["seeds"]), None)
            if s is None:
                continue
            x = i - 0.4 + width * (k + 0.5)
            xs.append(x)
            means.append(100 * s["mean"])
            stds.append(100 * s["std"])
            ax.scatter([x] * len(s["values"]), [100 * v for v in s["values"]], s=10, color="black", zorder=3)
        bars = ax.bar(xs, means, width * 0.9, yerr=stds, capsize=3,
                      label=f"{head} head" if by == ("start", "head") else f"{by[1]}={head}")
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], padding=2, fontsize=8)
    ax.set_xticks(range(len(starts)), starts, rotation=20, ha="right")
    ax.set_ylabel("fine-tune mIoU (%)")
    ax.set_title(title or "transfer to the target set")
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())
    return str(path)


def write_report(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 start_order: tuple[str, ...] = (), title: str = "", by: tuple[str, str] = ("start", "head")) -> dict:
    """Collect, summarise and write ``report.csv`` + ``report.png`` (to ``out_dir``, default ``root``; paths or
    URIs); returns ``{"table", "summary", "csv", "png"}``. ``FileNotFoundError`` when no tagged runs exist."""
    rows = collect_runs(root, by)
    if not rows:
        raise FileNotFoundError(f"{root}: no fine-tune runs with tags.json (fine-tune with rayseg, or run "
                                f"`rayseg demo`)")
    out_dir = storage.absolute(out_dir or root)
    summary = summarise(rows, start_order)
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow([*by, "seed", "miou", "run_dir"])
    for r in rows:
        writer.writerow([r.start, r.head, r.seed, "" if r.miou is None else f"{r.miou:.6f}", r.run_dir])
    csv_file = storage.join(out_dir, "report.csv")
    storage.write_text(csv_file, table.getvalue())
    png = render_chart(summary, storage.join(out_dir, "report.png"), title, by)
    return {"table": format_report(summary, by), "summary": summary, "csv": csv_file, "png": png}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default="rayseg_runs/demo/full",
                   help="folder (or object-store URI) of tagged fine-tune runs")
    p.add_argument("--out", default="", help="where report.csv and report.png go (default: --storage)")
    p.add_argument("--by", default="start,head", help="two tags of tags.json: rows, then bars (default start,head)")
    p.add_argument("--title", default="", help="the chart's title")


def run(args: argparse.Namespace) -> int:
    by = tuple(k.strip() for k in args.by.split(","))
    if len(by) != 2 or not all(by):
        raise ConfigError(f"give two tag names, e.g. start,head; got {args.by!r}", "--by")
    out = write_report(args.storage, args.out or None, title=args.title, by=by)
    print(out["table"])
    print(f"[rayseg] wrote {out['csv']} and {out['png']}")
    return 0
