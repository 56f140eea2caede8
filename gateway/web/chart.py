"""The meter page's week as inline SVG: energy per day as bars, the balance at each day's end as a
line.  Drawn on the server (no script, no external library): it scales with the page's width."""

from __future__ import annotations

from html import escape
from typing import Any

from gateway.web import fmt

W, H, PAD, GAP = 700, 180, 34, 8


def week_svg(series: list[dict[str, Any]], digits: int, labels: dict[str, str]) -> str:
    n = len(series)
    if n == 0:
        return ""
    top = max(1, max(p["energy_wh"] for p in series))
    lo = min(0, min(p["balance_minor"] for p in series))
    hi = max(1, max(p["balance_minor"] for p in series))
    span = hi - lo or 1
    slot = (W - 2 * PAD) / n
    plot_h = H - 2 * PAD
    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" xmlns="http://www.w3.org/2000/svg" '
        f'aria-label="{escape(labels["title"])}">',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="axis"/>',
    ]
    points = []
    for i, p in enumerate(series):
        x = PAD + i * slot
        bar = plot_h * p["energy_wh"] / top
        parts.append(
            f'<rect x="{x + GAP / 2:.1f}" y="{H - PAD - bar:.1f}" width="{slot - GAP:.1f}" height="{bar:.1f}" '
            f'class="bar"><title>{escape(p["day"])}: {fmt.kwh(p["energy_wh"])} kWh</title></rect>'
        )
        parts.append(
            f'<text x="{x + slot / 2:.1f}" y="{H - PAD + 14}" class="tick">{escape(p["day"][5:])}</text>'
        )
        parts.append(
            f'<text x="{x + slot / 2:.1f}" y="{H - PAD - bar - 3:.1f}" class="val">{fmt.kwh(p["energy_wh"])}</text>'
        )
        y = PAD + plot_h * (hi - p["balance_minor"]) / span
        points.append((x + slot / 2, y, p))
    parts.append(
        '<polyline class="line" points="' + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points) + '"/>'
    )
    for x, y, p in points:
        money = fmt.money(p["balance_minor"], digits)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot"><title>{escape(p["day"])}: '
                     f"{money}</title></circle>")
    parts.append(f'<text x="{PAD}" y="14" class="legend bar-legend">■ {escape(labels["energy"])} (kWh)</text>')
    parts.append(f'<text x="{W - PAD}" y="14" class="legend line-legend" text-anchor="end">● '
                 f'{escape(labels["balance"])} ({fmt.money(series[-1]["balance_minor"], digits)})</text>')
    parts.append("</svg>")
    return "".join(parts)
