"""Pictures of a build as SVG text: the workers' timeline and progress over time.

Plain SVG 1.1 with CSS classes and <title> tooltips: no script, no font or file to fetch, so the
pictures work inline in a page read from the file system. Built of `markup.Markup` templates:
worker and job names are escaped wherever they go.
"""

from .markup import Markup

COLORS = {"success": "#3a9a4a", "failure": "#d03b2f", "released": "#9a9a9a", "reclaimed": "#e08a1e",
          "building": "#3a6fd0"}
CLASSES = {"success": "ok", "failure": "fail", "released": "rel", "reclaimed": "rec", "building": "run"}
# Scoped to .chart: an inline SVG's style sheet applies to the whole page.
STYLE = Markup(".chart text{font:11px sans-serif;fill:#333}.chart .axis{stroke:#999;stroke-width:1}"
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
        out.append(Markup('<line class="grid" x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}"/>').format(x, y_top, y_axis))
        out.append(Markup('<text x="{:.1f}" y="{}" text-anchor="middle">{}</text>').format(
            x, y_axis + 14, _elapsed(k * step)))
        k += 1
    out.append(Markup('<line class="axis" x1="{0}" y1="{1}" x2="{2}" y2="{1}"/>').format(x0, y_axis, x0 + width))


def timeline(attempts: list[dict], now: float | None = None, width: int = 1000) -> Markup:
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
    out = [_SVG.format(width=width, height=height, label="timeline of the workers", style=STYLE)]
    _axis(out, t0, span, label_w, plot_w, top, top + lane * len(workers) + 2)
    for w, i in lanes.items():
        out.append(Markup('<text x="{}" y="{}" text-anchor="end">{}</text>').format(
            label_w - 6, top + i * lane + 13, w))
    for a in attempts:
        end = a["end"] if a["end"] is not None else t1
        x = label_w + plot_w * (a["start"] - t0) / span
        w = max(plot_w * (end - a["start"]) / span, 0.6)
        y = top + lanes[a["worker"]] * lane + 2
        took = f", {a['duration']:.0f} s" if a["duration"] is not None else ""
        out.append(Markup('<rect class="{}" x="{:.1f}" y="{}" width="{:.1f}" height="{}"><title>{}: {}{}</title></rect>'
                          ).format(CLASSES[a["result"]], x, y, w, lane - 4, a["job"], a["result"], took))
    out.append(Markup("</svg>"))
    return Markup("\n").join(out)


def progress(points: list[list], goal: int, width: int = 1000, height: int = 220) -> Markup:
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
    out = [_SVG.format(width=width, height=height, label="progress over time", style=STYLE)]
    _axis(out, t0, span, left, plot_w, top, top + plot_h)
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + plot_h * (1 - frac)
        out.append(Markup('<line class="grid" x1="{0}" y1="{1:.1f}" x2="{2}" y2="{1:.1f}"/>').format(
            left, y, left + plot_w))
        label = round(ymax * frac) if ymax >= 20 else f"{ymax * frac:.3g}"
        out.append(Markup('<text x="{}" y="{:.1f}" text-anchor="end">{}</text>').format(left - 6, y + 4, label))

    def line(column, color, name):
        xy = " ".join(f"{left + plot_w * (p[0] - t0) / span:.1f},{top + plot_h * (1 - p[column] / ymax):.1f}"
                      for p in points)
        out.append(Markup('<polyline fill="none" stroke="{}" stroke-width="2" points="{}"><title>{}: {}</title>'
                          "</polyline>").format(color, xy, name, points[-1][column]))

    line(1, COLORS["success"], "built")
    line(2, COLORS["failure"], "failed")
    out.append(Markup('<text x="{}" y="{}" class="ok">built {} of {}</text>').format(
        left + 8, top + 14, points[-1][1], goal))
    out.append(Markup('<text x="{}" y="{}" class="fail">failed {}</text>').format(left + 8, top + 28, points[-1][2]))
    out.append(Markup("</svg>"))
    return Markup("\n").join(out)


_SVG = Markup('<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
              'viewBox="0 0 {width} {height}" role="img" aria-label="{label}">\n<style>{style}</style>')


def _empty(message, width) -> Markup:
    return Markup('<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{0}" height="30" '
                  'viewBox="0 0 {0} 30"><text x="10" y="20">{1}</text></svg>').format(width, message)
