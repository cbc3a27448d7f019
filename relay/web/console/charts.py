"""The overview's charts, drawn on the server as SVG: no script, nothing loaded from
elsewhere, readable with JavaScript off. Colours are presentation attributes (the
Content-Security-Policy allows no inline style) and every text is escaped."""

from __future__ import annotations

import time

from markupsafe import Markup, escape

from relay.web.console.data import RateView

_W, _H = 640, 150
_BLUE, _RED, _AMBER, _GREY = "#2b6cb0", "#c53030", "#b7791f", "#4a5568"


def _text(x: float, y: float, s: str, *, anchor: str = "start", fill: str = _GREY,
          size: int = 11) -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{fill}">{escape(s)}</text>')


def rate_chart(view: RateView) -> Markup:
    """A bar for the rate over the guard's window, with a line at each threshold: ours
    (warn, pause) and AWS's (review, pause)."""
    top = max(view.aws_pause * 1.2, view.rate * 1.05)
    width, left, bar_y = _W - 20, 10, 52

    def x(rate: float) -> float:
        return left + width * min(rate, top) / top

    colour = (_RED if view.pause is not None and view.rate >= view.pause else
              _AMBER if view.rate >= view.warn else _BLUE)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} 110" role="img" '
             f'class="chart" aria-label="{escape(view.kind)} rate">',
             f'<rect x="{left}" y="{bar_y}" width="{width}" height="22" fill="#edf2f7"/>',
             f'<rect x="{left}" y="{bar_y}" width="{x(view.rate) - left:.1f}" height="22" '
             f'fill="{colour}" class="rate-bar"/>',
             _text(left, 16, f"{view.kind} rate {view.rate:.3%}", size=13, fill="#1a202c")]
    lines = [("warn", view.warn, _AMBER, 30), ("relay pause", view.pause, _RED, 42),
             ("AWS review", view.aws_review, _GREY, 92), ("AWS pause", view.aws_pause,
                                                            "#000000", 104)]
    for label, rate, stroke, label_y in lines:
        if rate is None:
            continue
        lx = x(rate)
        parts.append(f'<line x1="{lx:.1f}" y1="{bar_y - 6}" x2="{lx:.1f}" y2="{bar_y + 28}" '
                     f'stroke="{stroke}" stroke-width="2" stroke-dasharray="4 2" '
                     f'class="threshold"/>')
        anchor = "end" if lx > _W * 0.8 else "start"
        parts.append(_text(lx + (-3 if anchor == "end" else 3), label_y,
                           f"{label} {rate:.2%}", anchor=anchor, fill=stroke))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # texts escaped in _text, numbers formatted


def hourly_chart(series: dict[str, list[int]], start: float) -> Markup:
    """Recipients delivered per hour (blue) and messages failed (red) over 24 hours,
    bounces and complaints marked above their hour."""
    delivered, failed = series["delivered"], series["failed"]
    hours = len(delivered)
    peak = max([d + f for d, f in zip(delivered, failed, strict=True)] + [1])
    left, bottom, height = 40, _H - 20, _H - 40
    step = (_W - left - 10) / hours
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
             'class="chart" aria-label="deliveries per hour">',
             f'<line x1="{left}" y1="{bottom}" x2="{_W - 10}" y2="{bottom}" stroke="{_GREY}"/>',
             _text(left - 4, bottom - height + 4, str(peak), anchor="end"),
             _text(left - 4, bottom, "0", anchor="end")]
    for i in range(hours):
        x = left + i * step + 1
        d_h = height * delivered[i] / peak
        f_h = height * failed[i] / peak
        if d_h:
            parts.append(f'<rect x="{x:.1f}" y="{bottom - d_h:.1f}" width="{step - 2:.1f}" '
                         f'height="{d_h:.1f}" fill="{_BLUE}"><title>{delivered[i]} '
                         'delivered</title></rect>')
        if f_h:
            parts.append(f'<rect x="{x:.1f}" y="{bottom - d_h - f_h:.1f}" '
                         f'width="{step - 2:.1f}" height="{f_h:.1f}" fill="{_RED}">'
                         f'<title>{failed[i]} failed</title></rect>')
        marks = series["bounce"][i] + series["complaint"][i]
        if marks:
            parts.append(_text(x + step / 2, bottom - d_h - f_h - 4, f"{marks}!",
                               anchor="middle", fill=_AMBER))
        if i % 6 == 0:
            label = time.strftime("%H:00", time.gmtime(start + i * 3600))
            parts.append(_text(x, _H - 4, label))
    parts.append(_text(_W - 10, _H - 4, "UTC", anchor="end"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  # texts escaped in _text, numbers formatted
