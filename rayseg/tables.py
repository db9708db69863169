"""Plain-text output shared by every command: the table printer and the duration format of progress lines."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["format_duration", "format_table"]


def format_duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s`` / ``3s``."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_table(header: Sequence[str], rows: Sequence[Sequence[object] | None],
                 align: str | Sequence[str] | None = None) -> str:
    """Columns as wide as their widest cell, two spaces apart, a dashes line under the header; trailing spaces
    are stripped. Cells are shown with ``str``. ``align``: ``"<"`` (left, the default) or ``">"`` (right) per
    column, e.g. ``"<>>"``. A row that is ``None`` is drawn as another dashes line."""
    header = [str(h) for h in header]
    align = list(align) if align is not None else ["<"] * len(header)
    if len(align) != len(header) or set(align) - {"<", ">"}:
        raise ValueError(f"align: one of '<' or '>' per column ({len(header)}), got {align!r}")
    cells = [None if row is None else [str(c) for c in row] for row in rows]
    for row in cells:
        if row is not None and len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells, the header {len(header)}: {row!r}")
    widths = [max(len(c) for c in column) for column in zip(header, *(r for r in cells if r is not None))]
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))

    def line(row: list[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(row, align, widths)).rstrip()

    return "\n".join([line(header), rule, *(rule if r is None else line(r) for r in cells)])
