"""Pictures of a build as SVG text: the workers' timeline and progress over time.

Plain SVG 1.1 with CSS classes and <title> tooltips: no script, no font or file to fetch, so the
pictures work inline in a page read from the file system.
"""

from html import escape

COLORS = {"success": "#3a9a4a", "failure": "#d03b2f", "released": "#9a9a9a", "reclaimed": "#e08a1e",
          "building": "#3a6fd0"}
CLASSES = {"success": "ok", "failure": "fail", "released": "rel", "reclaimed": "rec", "building": "run"}
# Scoped to .chart: an inline SVG's style sheet applies to the whole page.
STYLE = (".chart text{font:11px sans-serif;fill:#333}.chart .axis{stroke:#999;stroke-width:1}"
         ".chart .grid{stroke:#e4e4e4}"
         + "".join(f".chart .{CLASSES[k]}{{fill:{v}}}" for k, v in COLORS.items()))
_STEPS = (60, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400, 30 * 86400)
MAX_POINTS = 800


def _step(span: float, ticks: int = 8) -> int:
    for step in _STEPS:
        if span / step <= ticks:
            return step
    return _STEPS[-1]


def _elapsed(seconds: int) -> str:
    if seconds == 0:
        return "0"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 or seconds % 86400:
        return f"{seconds / 3600:g} h"
    return f"{seconds // 86400} d"


def _axis(out, t0, span, x0, width, y_top, y_axis):
    step = _step(span)
    k = 0
    while k * step <= span:
        x = x0 + width * k * step / span
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{y_top}" x2="{x:.1f}" y2="{y_axis}"/>')
        out.append(f'<text x="{x:.1f}" y="{y_axis + 14}" text-anchor="middle">{_elapsed(k * step)}</text>')
        k += 1
    out.append(f'<line class="axis" x1="{x0}" y1="{y_axis}" x2="{x0 + width}" y2="{y_axis}"/>')


def timeline(attempts: list[dict], now: float | None = None, width: int = 1000) -> str:
    """Which package each worker built when: one lane per worker, one bar per attempt.

    `attempts` as timeline.Timeline.attempts() gives them; attempts still running end at `now`
    (default: the latest time known).
    """
    attempts = [a for a in attempts if a["start"] is not None]
    workers = sorted({a["worker"] for a in attempts})
    if not attempts:
        return _empty("no build attempts yet", width)
    t0 = min(a["start"] for a in attempts)
    known = [t for a in attempts for t in (a["start"], a["end"]) if t is not None]
    t1 = max(known + ([now] if now is not None else []))
    span = max(t1 - t0, 1)
    label_w, lane, top = 130, 18, 10
    plot_w = width - label_w - 20
    height = top + lane * len(workers) + 30
    lanes = {w: i for i, w in enumerate(workers)}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline of the workers">',
           f"<style>{STYLE}</style>"]
    _axis(out, t0, span, label_w, plot_w, top, top + lane * len(workers) + 2)
    for w, i in lanes.items():
        out.append(f'<text x="{label_w - 6}" y="{top + i * lane + 13}" text-anchor="end">{escape(w)}</text>')
    for a in attempts:
        end = a["end"] if a["end"] is not None else t1
        x = label_w + plot_w * (a["start"] - t0) / span
        w = max(plot_w * (end - a["start"]) / span, 0.6)
        y = top + lanes[a["worker"]] * lane + 2
        took = f", {a['duration']:.0f} s" if a["duration"] is not None else ""
        out.append(f'<rect class="{CLASSES[a["result"]]}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane - 4}">'
                   f'<title>{escape(a["job"])}: {a["result"]}{took}</title></rect>')
    out.append("</svg>")
    return "\n".join(out)


def progress(points: list[list], goal: int, width: int = 1000, height: int = 220) -> str:
    """Packages built and failed over time: `points` are [t, built so far, failed so far]."""
    if not points:
        return _empty("no results yet", width)
    if len(points) > MAX_POINTS:
        stride = len(points) / MAX_POINTS
        points = [points[int(i * stride)] for i in range(MAX_POINTS)] + [points[-1]]
    t0 = points[0][0]
    span = max(points[-1][0] - t0, 1)
    left, top, bottom = 60, 10, 30
    plot_w, plot_h = width - left - 20, height - top - bottom
    ymax = max(goal, points[-1][1], 1)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="progress over time">',
           f"<style>{STYLE}</style>"]
    _axis(out, t0, span, left, plot_w, top, top + plot_h)
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        label = round(ymax * frac) if ymax >= 20 else f"{ymax * frac:.3g}"
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')

    def line(column, color, name):
        xy = " ".join(f"{left + plot_w * (p[0] - t0) / span:.1f},{top + plot_h * (1 - p[column] / ymax):.1f}"
                      for p in points)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{xy}">'
                   f"<title>{name}: {points[-1][column]}</title></polyline>")

    line(1, COLORS["success"], "built")
    line(2, COLORS["failure"], "failed")
    out.append(f'<text x="{left + 8}" y="{top + 14}" class="ok">built {points[-1][1]} of {goal}</text>')
    out.append(f'<text x="{left + 8}" y="{top + 28}" class="fail">failed {points[-1][2]}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _empty(message, width):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="30" '
            f'viewBox="0 0 {width} 30"><text x="10" y="20">{escape(message)}</text></svg>')
