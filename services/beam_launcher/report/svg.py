"""Static SVG bar charts for the HTML report (no JavaScript, no external resources).

Every drawn bar segment is a ``<rect class="mark">`` carrying ``data-label``,
``data-series`` and ``data-value`` (the exact number it stands for), plus a ``<title>``
tooltip, so the page can be checked against the SQL that produced it.

Example:
    >>> svg = hbar_chart("Rows", [Bar("echo", [("2021-05-30", 3.0)], "3 rows")])
    >>> svg.count('class="mark"'), "<title>Rows</title>" in svg
    (1, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["PALETTE", "Bar", "color_for", "column_chart", "fmt_count", "fmt_share", "hbar_chart"]

# Colour-blind-friendly categorical palette (Tableau 10 hues).
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#8cd17d",
    "#d4a6c8",
    "#86bcb6",
    "#f1ce63",
)
# Fixed colours where a name has a meaning: expected outcomes green, unusable grey,
# scan types always the same hue.
NAMED_COLORS = {
    "expected": "#59a14f",
    "ip.matchip": "#59a14f",
    "ip.matchasn": "#8cd17d",
    "tls.validcert": "#3b7d3a",
    "setup": "#bab0ac",
    "unknown": "#79706e",
    "(none)": "#d7d2cf",
    "echo": "#4e79a7",
    "discard": "#76b7b2",
    "http": "#f28e2b",
    "https": "#e15759",
    "satellite": "#b07aa1",
    "with ASN": "#4e79a7",
    "with country": "#f28e2b",
    "completeness": "#4e79a7",
    "line coverage": "#f28e2b",
}
FONT = "font-family:'DejaVu Sans',Arial,Helvetica,sans-serif"
WIDTH = 960


@dataclass(frozen=True)
class Bar:
    """One bar: a label, its stacked parts ``(series, value)`` and a note drawn after it."""

    label: str
    parts: Sequence[tuple[str, float]]
    note: str = ""
    part_notes: Mapping[str, str] = field(default_factory=dict)


def color_for(series: str, order: Sequence[str]) -> str:
    """The colour of ``series``: a named colour, else the palette by position."""
    if series in NAMED_COLORS:
        return NAMED_COLORS[series]
    free = [s for s in order if s not in NAMED_COLORS]
    idx = free.index(series) if series in free else len(free)
    return PALETTE[idx % len(PALETTE)]


def fmt_count(value: float) -> str:
    """``1234`` → ``1,234``."""
    return f"{round(value):,}"


def fmt_share(value: float) -> str:
    """``0.1234`` → ``12.3%``."""
    return f"{value * 100:.1f}%"


def _num(value: float) -> str:
    """Exact value for ``data-value``: integers without a fraction."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _nice_ticks(top: float, count: int = 5) -> list[float]:
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(top / step)
    return [i * step for i in range(n + 1)]


def _text_width(text: str, size: float = 12) -> float:
    return len(text) * size * 0.6


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _legend(series: Sequence[str], x0: float, y0: float, width: float) -> tuple[list[str], float]:
    out: list[str] = []
    x, y = x0, y0
    for s in series:
        w = 18 + _text_width(s, 12) + 16
        if x + w > x0 + width and x > x0:
            x, y = x0, y + 18
        out.append(
            f'<rect class="swatch" x="{x:.1f}" y="{y:.1f}" width="12" height="12" '
            f'fill="{color_for(s, series)}"/>'
            f'<text x="{x + 16:.1f}" y="{y + 10.5:.1f}" font-size="12">{escape(s)}</text>'
        )
        x += w
    return out, y + 22


def _mark(
    x: float,
    y: float,
    w: float,
    h: float,
    fill: str,
    label: str,
    series: str,
    value: float,
    tip: str,
) -> str:
    return (
        f'<rect class="mark" x="{x:.2f}" y="{y:.2f}" width="{max(w, 0.0):.2f}" '
        f'height="{h:.2f}" fill="{fill}" data-label="{escape(label)}" '
        f'data-series="{escape(series)}" data-value="{_num(value)}">'
        f"<title>{escape(tip)}</title></rect>"
    )


def hbar_chart(
    title: str,
    bars: Sequence[Bar],
    *,
    share: bool = False,
    grouped: bool = False,
    series: Sequence[str] | None = None,
    axis_label: str = "",
) -> str:
    """Horizontal bars, one per :class:`Bar`; parts are stacked (or side by side when
    ``grouped``). ``share``: values are fractions drawn on a 0–100 % axis."""
    order = list(series or dict.fromkeys(s for b in bars for s, _ in b.parts))
    label_w = min(320.0, max([_text_width(_clip(b.label, 48)) for b in bars] + [40.0]) + 12)
    notes = [_text_width(b.note, 11) for b in bars]
    if grouped:  # each bar's value (and its note) is written after the bar
        notes += [_text_width(f"100.0% · {n}", 11) for b in bars for n in b.part_notes.values()]
    note_w = min(260.0, max([*notes, 40.0]) + 16)
    plot_x = label_w
    plot_w = WIDTH - label_w - note_w - 10
    legend, y = _legend(order, plot_x, 34, plot_w) if len(order) > 1 else ([], 34.0)
    y += 4
    bar_h = 16.0
    sub = len(order) if grouped else 1
    row_h = bar_h * sub + 8 + (2 * (sub - 1))
    if share:  # 0-100 %, further when a ratio exceeds 1 (e.g. duplicated rows)
        biggest = max((v for b in bars for _, v in b.parts), default=0.0)
        ticks = [i * 0.25 for i in range(max(4, math.ceil(biggest * 4)) + 1)]
        top = ticks[-1]
    else:
        totals = [
            max((v for _, v in b.parts), default=0.0) if grouped else sum(v for _, v in b.parts)
            for b in bars
        ]
        ticks = _nice_ticks(max(totals, default=0.0))
        top = ticks[-1]
    plot_top = y
    plot_h = row_h * len(bars)
    height = plot_top + plot_h + 40 + (14 if axis_label else 0)
    scale = plot_w / top if top else 0.0
    body: list[str] = []
    for t in ticks:
        x = plot_x + t * scale
        body.append(
            f'<line x1="{x:.1f}" y1="{plot_top - 2:.1f}" x2="{x:.1f}" '
            f'y2="{plot_top + plot_h:.1f}" stroke="#e3e3e3"/>'
            f'<text x="{x:.1f}" y="{plot_top + plot_h + 16:.1f}" font-size="11" '
            f'text-anchor="middle" fill="#555">{fmt_share(t) if share else fmt_count(t)}</text>'
        )
    if axis_label:
        body.append(
            f'<text x="{plot_x + plot_w / 2:.1f}" y="{plot_top + plot_h + 34:.1f}" '
            f'font-size="11" text-anchor="middle" fill="#555">{escape(axis_label)}</text>'
        )
    for i, b in enumerate(bars):
        y0 = plot_top + i * row_h + 4
        body.append(
            f'<text x="{plot_x - 8:.1f}" y="{y0 + (row_h - 8) / 2 + 4:.1f}" font-size="12" '
            f'text-anchor="end"><title>{escape(b.label)}</title>{escape(_clip(b.label, 48))}</text>'
        )
        x = plot_x
        for j, (s, v) in enumerate(b.parts):
            fmt = fmt_share(v) if share else fmt_count(v)
            tip = f"{b.label} · {s}: {fmt}" + (f" ({b.part_notes[s]})" if s in b.part_notes else "")
            fill = color_for(s, order)
            if grouped:
                yy = y0 + order.index(s) * (bar_h + 2) if s in order else y0 + j * (bar_h + 2)
                body.append(_mark(plot_x, yy, v * scale, bar_h, fill, b.label, s, v, tip))
                body.append(
                    f'<text class="value" x="{plot_x + v * scale + 4:.1f}" y="{yy + 12:.1f}" '
                    f'font-size="11" fill="#333">{escape(fmt)}'
                    + (f" · {escape(b.part_notes[s])}" if s in b.part_notes else "")
                    + "</text>"
                )
            else:
                w = v * scale
                body.append(_mark(x, y0, w, bar_h, fill, b.label, s, v, tip))
                if share and w > 34:
                    body.append(
                        f'<text x="{x + w / 2:.1f}" y="{y0 + 12:.1f}" font-size="10" '
                        f'text-anchor="middle" fill="#fff">{fmt_share(v)}</text>'
                    )
                x += w
        if b.note:
            nx = WIDTH - note_w + 6 if share or grouped else x + 6
            body.append(
                f'<text class="note" x="{nx:.1f}" y="{y0 + 12:.1f}" font-size="11" '
                f'fill="#333">{escape(b.note)}</text>'
            )
    return _svg(title, height, [*legend, *body])


def column_chart(
    title: str,
    categories: Sequence[str],
    values: Mapping[tuple[str, str], float],
    series: Sequence[str],
    axis_label: str = "",
) -> str:
    """Vertical stacked columns: one per category (e.g. a date), stacked by series."""
    legend, y = _legend(series, 70, 34, WIDTH - 90)
    plot_top = y + 6
    plot_h = 260.0
    plot_x, plot_w = 70.0, WIDTH - 90.0
    totals = [sum(values.get((c, s), 0.0) for s in series) for c in categories]
    ticks = _nice_ticks(max(totals, default=0.0))
    top = ticks[-1]
    scale = plot_h / top if top else 0.0
    slot = plot_w / max(len(categories), 1)
    col_w = max(2.0, min(48.0, slot * 0.7))
    rotate = slot < 70
    label_h = 80.0 if rotate else 24.0
    height = plot_top + plot_h + label_h + (16 if axis_label else 0)
    body: list[str] = []
    base = plot_top + plot_h
    for t in ticks:
        yy = base - t * scale
        body.append(
            f'<line x1="{plot_x:.1f}" y1="{yy:.1f}" x2="{plot_x + plot_w:.1f}" y2="{yy:.1f}" '
            f'stroke="#e3e3e3"/><text x="{plot_x - 6:.1f}" y="{yy + 4:.1f}" font-size="11" '
            f'text-anchor="end" fill="#555">{fmt_count(t)}</text>'
        )
    if axis_label:
        body.append(
            f'<text x="16" y="{plot_top + plot_h / 2:.1f}" font-size="11" fill="#555" '
            f'transform="rotate(-90 16 {plot_top + plot_h / 2:.1f})" text-anchor="middle">'
            f"{escape(axis_label)}</text>"
        )
    for i, c in enumerate(categories):
        cx = plot_x + slot * i + (slot - col_w) / 2
        yy = base
        for s in series:
            v = values.get((c, s), 0.0)
            if not v:
                continue
            h = v * scale
            yy -= h
            tip = f"{c} · {s}: {fmt_count(v)}"
            body.append(_mark(cx, yy, col_w, h, color_for(s, series), c, s, v, tip))
        if totals[i] and slot >= 40:
            body.append(
                f'<text class="note" x="{cx + col_w / 2:.1f}" y="{yy - 4:.1f}" font-size="10" '
                f'text-anchor="middle" fill="#333">{fmt_count(totals[i])}</text>'
            )
        lx, ly = cx + col_w / 2, base + 14
        if rotate:
            body.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="10" text-anchor="end" '
                f'transform="rotate(-60 {lx:.1f} {ly:.1f})">{escape(c)}</text>'
            )
        else:
            body.append(
                f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="11" text-anchor="middle">'
                f"{escape(c)}</text>"
            )
    return _svg(title, height, [*legend, *body])


def _svg(title: str, height: float, body: Sequence[str]) -> str:
    return (
        f'<svg class="chart" role="img" '
        f'width="{WIDTH}" height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'style="{FONT}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<text x="0" y="18" font-size="15" font-weight="bold">{escape(title)}</text>'
        + "".join(body)
        + "</svg>"
    )
