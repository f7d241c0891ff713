"""The HTML report: one self-contained file with inline SVG charts (no scripts, no network)."""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from device_sdk import LatencyHistogram
from fleet_sim._metrics import series_histogram

__all__ = ["line_chart", "render_html", "write_html"]

_W, _H = 760, 260
_ML, _MR, _MT, _MB = 64, 16, 28, 36
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10_000:  # noqa: PLR2004
        return f"{v / 1000:.0f}k"
    if abs(v) >= 100:  # noqa: PLR2004
        return f"{v:.0f}"
    return f"{v:.3g}"


def line_chart(
    title: str,
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    y_label: str = "",
    x_label: str = "seconds",
    log_y: bool = False,
) -> str:
    """An SVG line chart; ``None`` values leave gaps."""
    esc = html.escape
    pw, ph = _W - _ML - _MR, _H - _MT - _MB
    values = [v for _, ys in series for v in ys if v is not None and (v > 0 or not log_y)]
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" class="chart" '
            f'role="img" aria-label="{esc(title)}">'
        ),
        f'<text x="{_ML}" y="18" class="title">{esc(title)}</text>',
    ]
    if not xs or not values:
        out.append(f'<text x="{_W / 2}" y="{_H / 2}" class="empty">no data</text></svg>')
        return "".join(out)
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    if log_y:
        lo = math.floor(math.log10(min(values)))
        hi = math.ceil(math.log10(max(values)))
        hi = hi if hi > lo else lo + 1
        yticks = [10.0**e for e in range(lo, hi + 1)]

        def ymap(v: float) -> float:
            return _MT + ph - (math.log10(v) - lo) / (hi - lo) * ph

    else:
        yticks = _nice_ticks(0.0, max(values))
        top = yticks[-1] or 1.0

        def ymap(v: float) -> float:
            return _MT + ph - v / top * ph

    def xmap(v: float) -> float:
        return _ML + (v - x0) / (x1 - x0) * pw

    for t in yticks:
        y = ymap(t)
        out.append(f'<line x1="{_ML}" x2="{_ML + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{_ML - 6}" y="{y + 4:.1f}" class="ytick">{_fmt(t)}</text>')
    for t in _nice_ticks(x0, x1, 8):
        if x0 <= t <= x1:
            x = xmap(t)
            out.append(f'<text x="{x:.1f}" y="{_MT + ph + 16}" class="xtick">{_fmt(t)}</text>')
    out.append(
        f'<line x1="{_ML}" x2="{_ML + pw}" y1="{_MT + ph}" y2="{_MT + ph}" class="axis"/>'
        f'<text x="{_ML + pw}" y="{_H - 4}" class="xlabel">{esc(x_label)}</text>'
        f'<text x="12" y="{_MT + ph / 2}" class="ylabel" '
        f'transform="rotate(-90 12 {_MT + ph / 2})">{esc(y_label)}</text>'
    )
    for k, (name, ys) in enumerate(series):
        color = _COLORS[k % len(_COLORS)]
        runs: list[list[str]] = [[]]
        for x, v in zip(xs, ys, strict=False):
            if v is None or (log_y and v <= 0):
                runs.append([])
                continue
            runs[-1].append(f"{xmap(x):.1f},{ymap(v):.1f}")
        for run in runs:
            if len(run) > 1:
                out.append(f'<polyline points="{" ".join(run)}" stroke="{color}" class="line"/>')
            elif run:
                cx, cy = run[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
        lx = _ML + pw - 150
        ly = _MT + 12 + 14 * k
        out.append(
            f'<rect x="{lx}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly + 1}" class="legend">{esc(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _histogram_chart(title: str, hist: LatencyHistogram) -> str:
    counts = hist.counts
    nonzero = [i for i, c in enumerate(counts) if c]
    if not nonzero:
        return line_chart(title, [], [])
    lo, hi = nonzero[0], nonzero[-1]
    bounds = LatencyHistogram.bounds
    xs = [bounds[min(i, len(bounds) - 1)] * 1000 for i in range(lo, hi + 1)]
    ys: list[float | None] = [float(counts[i]) for i in range(lo, hi + 1)]
    return line_chart(title, xs, [("messages", ys)], y_label="count", x_label="ms (bucket bound)")


def _rows(pairs: Sequence[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_cell(v))}</td></tr>" for k, v in pairs
    )


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"  # noqa: PLR2004
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_cell(x)}" for k, x in v.items()) or "—"
    return str(v)


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.2f} ms"


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:800px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px}
.meta{color:#666} table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{border-bottom:1px solid #eee;padding:4px 8px;text-align:left;vertical-align:top}
th{width:38%;font-weight:600;color:#444}
.chart{width:100%;height:auto;margin:12px 0;background:#fcfcfc;border:1px solid #eee}
.chart .title{font-weight:600;font-size:13px}.chart .grid{stroke:#e6e6e6}
.chart .axis{stroke:#999}.chart .line{fill:none;stroke-width:1.6}
.chart .ytick{text-anchor:end;font-size:11px;fill:#555}
.chart .xtick{text-anchor:middle;font-size:11px;fill:#555}
.chart .xlabel{text-anchor:end;font-size:11px;fill:#777}
.chart .ylabel{text-anchor:middle;font-size:11px;fill:#777}
.chart .legend{font-size:11px}.chart .empty{text-anchor:middle;fill:#999}
"""


def render_html(report: dict[str, Any]) -> str:
    """The HTML document for a report."""
    s = report["summary"]
    m = report["metrics"]
    series = m.get("series", [])
    xs = [float(p["t"]) for p in series]
    hists = [series_histogram(p) for p in series]

    def pct(q: float) -> list[float | None]:
        return [h.quantile(q) * 1000 if h.count else None for h in hists]

    lat_values = [v for v in pct(0.99) + pct(0.5) if v]
    log_lat = bool(lat_values) and max(lat_values) / max(min(lat_values), 1e-6) > 50  # noqa: PLR2004
    charts = [
        line_chart(
            "Throughput",
            xs,
            [
                ("acked msg/s", [float(p["acked"]) for p in series]),
                ("sent msg/s", [float(p["sent"]) for p in series]),
            ],
            y_label="messages / s",
        ),
        line_chart(
            "Connected devices",
            xs,
            [("connected", [float(p["connected"]) for p in series])],
            y_label="devices",
        ),
        line_chart(
            "Publish → PUBACK latency (per second)",
            xs,
            [("p50", pct(0.5)), ("p90", pct(0.9)), ("p99", pct(0.99))],
            y_label="ms",
            log_y=log_lat,
        ),
        _histogram_chart(
            "Publish → PUBACK latency distribution (whole run)",
            LatencyHistogram.from_dict(m["histograms"]["puback"]),
        ),
        line_chart(
            "Simulator CPU",
            xs,
            [("CPU % of one core", [100.0 * float(p.get("cpu", 0.0)) for p in series])],
            y_label="%",
        ),
    ]
    c, msgs, proc = s["connects"], s["messages"], s["process"]
    started = dt.datetime.fromtimestamp(report["started_at"], tz=dt.UTC).isoformat(
        timespec="seconds"
    )
    sections = [
        (
            "Run",
            [
                ("scenario", report["scenario"]["name"]),
                ("run id", report["run_id"]),
                ("started (UTC)", started),
                ("duration", f"{s['duration_s']:.1f} s"),
                (
                    "target",
                    (
                        f"{report['target']['kind']} {report['target']['host']}:"
                        f"{report['target']['port']} ({report['target']['broker']})"
                    ),
                ),
                ("devices / processes", f"{s['devices']:,} / {s['processes']}"),
            ],
        ),
        (
            "Connections",
            [
                ("attempted / ok / failed", f"{c['attempted']:,} / {c['ok']:,} / {c['failed']:,}"),
                ("failures by reason", c["failed_by_reason"]),
                ("connects per second", c["per_second"]),
                ("all connected after", c["all_connected_after_s"]),
                (
                    "connect latency p50 / p99",
                    f"{_ms(c['latency']['p50_s'])} / {_ms(c['latency']['p99_s'])}",
                ),
                ("disconnects", c["disconnects"]),
            ],
        ),
        (
            "Messages",
            [
                ("sent / acked", f"{msgs['sent']:,} / {msgs['acked']:,}"),
                ("target / achieved msg/s", f"{msgs['target_per_s']} / {msgs['achieved_per_s']}"),
                (
                    "PUBACK p50 / p90 / p99",
                    " / ".join(
                        str(_ms(s["puback_latency"][k])) for k in ("p50_s", "p90_s", "p99_s")
                    ),
                ),
                ("events", msgs["events"]),
                ("errors", s["errors"]["by_kind"] or 0),
            ],
        ),
        (
            "Shadow and commands",
            [
                (
                    "shadow updates / accepted / rejected",
                    (
                        f"{s['shadow']['updates']:,} / "
                        f"{s['shadow']['accepted']:,} / {s['shadow']['rejected']:,}"
                    ),
                ),
                ("shadow deltas received", s["shadow"]["deltas"]),
                (
                    "shadow round trip p50 / p99",
                    (
                        f"{_ms(s['shadow']['round_trip']['p50_s'])} / "
                        f"{_ms(s['shadow']['round_trip']['p99_s'])}"
                    ),
                ),
                ("commands handled", s["commands"]["handled"] or 0),
            ],
        ),
        (
            "Simulator process",
            [
                ("CPU seconds", proc["cpu_s"]),
                ("acked msgs per CPU second (steady)", proc["steady_acked_per_cpu_s"]),
                ("peak RSS", f"{(proc['rss_peak_bytes'] or 0) / 2**20:.1f} MiB"),
                ("RSS per device", f"{(proc['rss_per_device_bytes'] or 0) / 1024:.1f} KiB"),
            ],
        ),
    ]
    if "sink" in s:
        sk = s["sink"]
        sections.append(
            (
                "Sink (receiving side)",
                [
                    ("received / unique", f"{sk['received']:,} / {sk['unique']:,}"),
                    (
                        "lost / duplicates / reordered",
                        f"{sk['lost']} / {sk['duplicates']} / {sk['reordered']}",
                    ),
                    (
                        "delivery latency p50 / p99",
                        (
                            f"{_ms(sk['delivery_latency']['p50_s'])} / "
                            f"{_ms(sk['delivery_latency']['p99_s'])}"
                        ),
                    ),
                ],
            )
        )
    if "operator" in s:
        op = s["operator"]
        sections.append(
            (
                "Operator (cloud side)",
                [
                    (
                        "commands / desired changes sent",
                        f"{op['commands_sent']} / {op['desired_sent']}",
                    ),
                    ("command outcomes", op["command_outcomes"]),
                    (
                        "command round trip p50 / p99",
                        f"{_ms(op['command_rtt']['p50_s'])} / {_ms(op['command_rtt']['p99_s'])}",
                    ),
                ],
            )
        )
    body = [f"<h1>fleet-sim report: {html.escape(report['scenario']['name'])}</h1>"]
    body.append(f'<p class="meta">run {html.escape(report["run_id"])}, {started}</p>')
    body.append(charts[0] + charts[1])
    for title, pairs in sections:
        body.append(f"<h2>{html.escape(title)}</h2><table>{_rows(pairs)}</table>")
    body.append("<h2>Latency</h2>" + charts[2] + charts[3])
    body.append("<h2>Resources</h2>" + charts[4])
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fleet-sim: {html.escape(report['scenario']['name'])}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )


def write_html(report: dict[str, Any], path: Path) -> None:
    """Write the HTML report."""
    path.write_text(render_html(report), encoding="utf-8")
