"""What the demo tells its user: a summary table, run_summary.json and an HTML report.

The HTML report is one self-contained file: the yield timeline as an inline SVG (a rolling
share of confident answers, one colour per phase) and the analyze stage's confusion matrices.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ctloop_app.demo import DemoSummary
from ctloop_app.demo_parts import PassRateSummary
from ctloop_app.figures import optional_figure
from ctloop.images import write_atomic

PHASE_COLOURS = ("#2b8a3e", "#c92a2a", "#1864ab", "#e67700")


def summary_table(summary: DemoSummary) -> str:
    """A plain-text table of the figures a user checks first."""
    rows = [("phase", "requests", "yield", "accuracy", "champion version(s)")]
    rows += [(p.name, str(p.requests), f"{p.yield_value:.3f}", f"{p.accuracy:.3f}", ", ".join(p.versions))
             for p in summary.phases]
    lines = _table(rows)
    lines.append("")
    facts = [
        ("champion", f"v{summary.champion_before} -> v{summary.champion_after}"),
        ("old champion accuracy on drifted parts", f"{summary.old_champion_accuracy_on_drift:.3f}"),
        ("new champion accuracy on drifted parts", f"{summary.new_champion_accuracy_on_drift:.3f}"),
        ("consensus kept share", optional_figure(summary.kept_share)),
        ("pseudo-label precision (audited parts)", optional_figure(summary.pseudo_label_precision)),
        ("estimated champion accuracy (ATC)", optional_figure(summary.estimated_accuracy)),
        ("estimated B1/B2 accuracy (disagreement)", optional_figure(summary.estimated_branch_accuracy)),
        ("total seconds", f"{summary.seconds:.1f}"),
    ]
    lines += [f"{name:<42} {value}" for name, value in facts]
    retrain = summary.cycles[-1]
    lines += ["", "retraining cycle, seconds per stage (process start-up included):"]
    lines += _table([("stage", "seconds")] + [(name, f"{seconds:.2f}")
                                              for name, seconds in retrain["stage_seconds"].items()])
    if summary.pass_rate is not None:
        lines += ["", *pass_rate_table(summary.pass_rate)]
    return "\n".join(lines)


def pass_rate_table(line: PassRateSummary) -> list[str]:
    """The parts line's pass rate per phase, as the monitor measured it, and whether it tripped."""
    head = (f"pass rate on the parts line ({line.image_size}x{line.image_size}, {line.line_ok_share:.0%} OK parts; "
            f"yield_mode pass_rate, ok_class {line.ok_class!r}; champion golden accuracy "
            f"{line.golden_accuracy:.3f}; not retrained here, {line.seconds:.1f} s):")
    rows = [("phase", "parts", "pass rate", "truly OK", "accuracy", "threshold", "monitor")]
    rows += [(p.name, str(p.parts), f"{p.pass_rate:.3f}" + ("" if p.mode == "pass_rate" else f" ({p.mode})"),
              f"{p.ok_share:.3f}", f"{p.accuracy:.3f}", optional_figure(p.threshold),
              "tripped: retrain" if p.retrain else "quiet") for p in line.phases]
    return [head, *_table(rows)]


def write_summary_json(summary: DemoSummary, path: Path) -> None:
    data = dataclasses.asdict(summary)
    data.pop("timeline")
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_html_report(summary: DemoSummary, path: Path, window: int = 50) -> None:
    body = [
        "<h1>ctloop demo</h1>",
        f"<p>Drift: {html.escape(str(summary.settings['drift_kind']))} at severity "
        f"{summary.settings['drift_severity']}. Champion v{summary.champion_before} &rarr; "
        f"v{summary.champion_after}.</p>",
        "<h2>Yield timeline</h2>",
        _timeline_svg(summary.timeline, summary.settings["yield_confidence"], summary.settings["yield_threshold"],
                      window),
        "<h2>Summary</h2>",
        f"<pre>{html.escape(summary_table(summary))}</pre>",
        "<h2>Confusion matrices of the retraining cycle (rows: true class)</h2>",
    ]
    body += [_matrix_table(name, matrix) for name, matrix in summary.confusion_matrices.items()]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>ctloop demo</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    write_atomic(path, page.encode())


def _timeline_svg(timeline: list[tuple[int, float, str]], confidence: float, threshold: float | None,
                  window: int, width: int = 800, height: int = 240) -> str:
    """Rolling yield (share of answers with confidence >= `confidence`) over the part position."""
    confident = np.array([value >= confidence for _, value, _ in timeline], dtype=float)
    rolling = np.convolve(confident, np.ones(window) / window, mode="valid")
    names = list(dict.fromkeys(name for _, _, name in timeline))
    scale_x = width / max(len(confident), 1)
    parts = [f"<svg width='{width}' height='{height + 20}' xmlns='http://www.w3.org/2000/svg'>",
             f"<rect width='{width}' height='{height}' fill='#f8f9fa'/>"]
    parts += ["<text x='4' y='14' fill='#495057'>yield 1.0</text>",
              f"<text x='4' y='{height - 6}' fill='#495057'>0.0</text>",
              f"<text x='{width - 4}' y='{height - 6}' fill='#495057' text-anchor='end'>"
              f"part position (rolling window of {window})</text>"]
    if threshold is not None:
        y = height * (1 - threshold)
        parts.append(f"<line x1='0' x2='{width}' y1='{y:.1f}' y2='{y:.1f}' stroke='#868e96' stroke-dasharray='4'/>")
        parts.append(f"<text x='{width - 4}' y='{y - 4:.1f}' fill='#868e96' text-anchor='end'>"
                     f"yield_threshold {threshold}</text>")
    for index, name in enumerate(names):
        points = [(i + window - 1, value) for i, value in enumerate(rolling) if timeline[i + window - 1][2] == name]
        path = " ".join(f"{x * scale_x:.1f},{height * (1 - value):.1f}" for x, value in points)
        colour = PHASE_COLOURS[index % len(PHASE_COLOURS)]
        parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{path}'/>")
        parts.append(f"<text x='{10 + 200 * index}' y='{height + 15}' fill='{colour}'>{html.escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _matrix_table(name: str, matrix: dict[str, Any]) -> str:
    classes = [row["displayName"] for row in matrix.get("annotationSpecs", [])]
    rows = [row["row"] for row in matrix.get("rows", [])]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = "".join(f"<tr><th>{html.escape(c)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                   for c, row in zip(classes, rows))
    return f"<h3>{html.escape(name)}</h3><table><tr><th></th>{head}</tr>{body}</table>"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]

