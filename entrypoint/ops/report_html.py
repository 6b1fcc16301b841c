"""The report as one HTML page (pure): inline CSS, inline SVG charts (charts.py), no script and a
Content-Security-Policy that forbids any request, so it opens the same from S3, a laptop or an
e-mail attachment. Every value is escaped; the settings are redacted again here."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from entrypoint.config import sensitive
from entrypoint.config.sensitive import REDACTED
from entrypoint.ops import charts

LABELS = {
    "loss": "train loss",
    "eval_loss": "eval loss",
    "learning_rate": "learning rate",
    "grad_norm": "gradient norm",
}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
:root { --ink: #0f172a; --muted: #64748b; --line: #e2e8f0; --card: #ffffff; --page: #f8fafc;
  --accent: #2563eb; --bad: #dc2626; --good: #16a34a; --warn: #d97706; --band: #f1f5f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--page); }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { margin: 2px 0 6px; font-size: 22px; word-break: break-all; }
.eyebrow { color: var(--muted); text-transform: uppercase; letter-spacing: .08em; font-size: 11px; }
.meta { color: var(--muted); margin: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600;
  background: var(--band); color: var(--ink); }
.badge.finished { background: #dcfce7; color: #166534; }
.badge.in-progress, .badge.running { background: #dbeafe; color: #1e40af; }
.badge.interrupted, .badge.killed { background: #fee2e2; color: #991b1b; }
h2 { font-size: 16px; margin: 32px 0 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 12px; margin-top: 20px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 22px; font-weight: 650; margin-top: 2px; }
.card .sub { color: var(--muted); font-size: 12px; }
.bar { height: 6px; background: var(--band); border-radius: 3px; margin-top: 8px; overflow: hidden; }
.bar > div { height: 100%; background: var(--accent); }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 10px 12px; }
figcaption { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; }
figcaption h3 { font-size: 14px; margin: 0 8px 0 0; }
.key { color: var(--muted); font-size: 12px; }
.key i { display: inline-block; width: 14px; height: 3px; margin-right: 5px; vertical-align: middle; }
svg.chart { width: 100%; height: auto; display: block; font-size: 11px; }
svg.chart .grid { stroke: var(--line); }
svg.chart .axis { stroke: #94a3b8; }
svg.chart .tick, svg.chart .axis-label, svg.chart .empty { fill: var(--muted); }
svg.chart .series { fill: none; stroke-width: 2; stroke-linejoin: round; }
svg.chart .attempt-band rect { fill: var(--band); }
svg.chart .attempt-band:nth-of-type(even) rect { fill: #e0e7ff; opacity: .55; }
svg.chart .attempt-band text { fill: var(--muted); font-size: 10px; }
svg.chart .interruption line { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 5 4; }
svg.chart .interruption .hit { stroke: transparent; stroke-width: 12; stroke-dasharray: none; }
svg.chart .interruption .flag { fill: var(--bad); }
.note { color: var(--muted); margin: -4px 0 10px; }
.note .flag { color: var(--bad); }
table { width: 100%; border-collapse: collapse; background: var(--card); border: 1px solid var(--line);
  border-radius: 10px; overflow: hidden; }
td:first-child { width: 1%; white-space: nowrap; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--band); font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td code, dd code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; word-break: break-all; }
.redacted { color: var(--warn); font-style: italic; }
dl.inputs { display: grid; grid-template-columns: max-content 1fr; gap: 6px 16px; background: var(--card);
  border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; margin: 0; }
dl.inputs dt { color: var(--muted); }
dl.inputs dd { margin: 0; }
details summary { cursor: pointer; color: var(--accent); margin-bottom: 8px; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; }
"""


def redact(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings fit to publish: no AWS_* variable at all, and the project's one redaction rule
    (config/sensitive.py): secret-looking names' values replaced, those values, the ones this
    process knows of and URI credentials (scheme://user:password@host) scrubbed from the others."""
    kept = {k: v for k, v in settings.items() if not k.upper().startswith(("AWS_", "FT_AWS_"))}
    return sensitive.redact(kept, known=sensitive.known())


def _e(value: Any) -> str:
    return html.escape(str(value))


def value_text(value: Any) -> str:
    """A value as escaped text for a table cell: numbers shortened, lists joined, nothing as a dash."""
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else charts.number(value)
    if isinstance(value, list):
        return _e(", ".join(str(v) for v in value))
    return _e(value)


def label(name: str) -> str:
    return LABELS.get(name, name.replace("eval_", "eval ").replace("_", " "))


def _badge(outcome: str) -> str:
    kind = outcome.split()[0]  # finished, interrupted, killed, running
    return f'<span class="badge {_e(kind)}">{_e(outcome)}</span>'


def _card(title: str, value: str, sub: str = "", extra: str = "") -> str:
    return (
        f'<div class="card"><div class="label">{_e(title)}</div><div class="value">{value}</div>'
        f'<div class="sub">{sub}</div>{extra}</div>'
    )


def cards(report: dict) -> str:
    s, speed = report["summary"], report["throughput"]
    done = s["durable_step"] or 0
    planned = s["planned_steps"]
    progress = f"{done} / {planned}" if planned else str(done)
    bar = f'<div class="bar"><div style="width:{min(s["percent_done"] or 0, 100)}%"></div></div>' if planned else ""
    eta = f", ETA {s['eta_s']} s" if s["eta_s"] is not None else ""
    lost = s["steps_lost"]
    notice = [i["notice_to_durable_s"] for i in report["interruptions"] if i["notice_to_durable_s"] is not None]
    if speed["train_steps_per_second"] is not None:
        rate = f"{charts.number(speed['train_steps_per_second'])} steps/s"
        rate_sub = (
            f"{charts.number(speed['train_samples_per_second'])} samples/s (Trainer)"
            if speed["train_samples_per_second"] is not None
            else ""
        )
    elif speed["checkpoint_steps_per_second"] is not None:
        rate, rate_sub = f"{charts.number(speed['checkpoint_steps_per_second'])} steps/s", "between checkpoints"
    else:
        rate, rate_sub = "—", "not known yet"
    out = [
        _card("Durable steps", progress, f"{s['percent_done'] or 0}% of planned{eta}" if planned else "", bar),
        _card("Attempts", str(len(report["attempts"])), f"{max(len(report['attempts']) - 1, 0)} restart(s)"),
        _card("Interruptions", str(s["interruptions"]), f"{lost} step(s) lost"),
        _card(
            "Notice → durable",
            f"{charts.number(max(notice))} s" if notice else "—",
            "stop request to checkpoint in storage" if notice else "no interrupted attempt recorded it",
        ),
        _card("Throughput", rate, rate_sub),
    ]
    finals = report["summary"]["final_metrics"] or {}
    latest = {k: v for k, v in finals.items() if k.startswith("eval_") and not k.endswith(("_runtime", "_second"))}
    if not latest:
        latest = {k: pts[-1][1] for k, pts in report["curves"].items() if k.startswith("eval_") and pts}
    for name, value in list(latest.items())[:3]:
        out.append(_card(label(name), value_text(value), "final" if finals else "latest evaluation"))
    return f'<section class="cards">{"".join(out)}</section>'


def figures(report: dict) -> str:
    """One chart per quantity: loss (training and evaluation), each other evaluation metric, the
    learning rate, then anything else logged."""
    found = report["curves"]
    groups: list[tuple[str, str, list[str]]] = []
    if "loss" in found or "eval_loss" in found:
        groups.append(("loss", "Loss", [n for n in ("loss", "eval_loss") if n in found]))
    groups += [(n, label(n), [n]) for n in found if n.startswith("eval_") and n != "eval_loss"]
    groups += [(n, label(n).capitalize(), [n]) for n in ("learning_rate", "grad_norm") if n in found]
    shown = {n for _, _, names in groups for n in names}
    groups += [(n, label(n), [n]) for n in found if n not in shown]
    bands = [
        charts.Band(a["from_step"], a["to_step"], f"attempt {a['attempt']}", a["attempt"])
        for a in report["attempts"]
        if a["from_step"] is not None and a["to_step"] is not None
    ]
    markers = [charts.Marker(i["step"], i["label"]) for i in report["interruptions"]]
    out = []
    for key, title, names in groups:
        series = [charts.Series(n, found[n], charts.PALETTE[i % len(charts.PALETTE)]) for i, n in enumerate(names)]
        legend = "".join(
            f'<span class="key"><i style="background:{s.color}"></i>{_e(label(s.name))}</span>' for s in series
        )
        out.append(
            f"<figure><figcaption><h3>{_e(title)}</h3>{legend}</figcaption>"
            f"{charts.line_chart(key, series, bands, markers)}</figure>"
        )
    if not out:
        return '<p class="note">Nothing logged yet: the curves appear with the first durable checkpoint.</p>'
    return f'<div class="charts">{"".join(out)}</div>'


def attempts_table(report: dict) -> str:
    head = (
        "<tr><th>attempt</th><th>started</th><th>where</th><th>steps</th><th>outcome</th>"
        '<th class="num">steps lost</th><th class="num">notice → durable (s)</th>'
        '<th class="num">start → first step (s)</th><th class="num">upload MB/s</th></tr>'
    )
    rows = []
    for a in report["attempts"]:
        span = f"{value_text(a['from_step'])} → {value_text(a['to_step'])}"
        rows.append(
            f"<tr><td>{a['attempt']}</td><td>{value_text(a['started'])}</td><td>{value_text(a['where'])}</td>"
            f"<td>{span}</td><td>{_badge(a['outcome'])}</td><td class='num'>{value_text(a['steps_lost'])}</td>"
            f"<td class='num'>{value_text(a['notice_to_durable_s'])}</td>"
            f"<td class='num'>{value_text(a.get('start_to_first_step_s'))}</td>"
            f"<td class='num'>{value_text(a.get('upload_mb_per_s'))}</td></tr>"
        )
    if not rows:
        return '<p class="note">No attempt has started yet.</p>'
    return f"<table>{head}{''.join(rows)}</table>"


def throughput_list(report: dict) -> str:
    speed = report["throughput"]
    names = {
        "train_steps_per_second": "training steps/s (Trainer, last attempt)",
        "train_samples_per_second": "training samples/s (Trainer, last attempt)",
        "train_runtime_s": "training seconds (Trainer, last attempt)",
        "eval_samples_per_second": "evaluation samples/s",
        "checkpoint_steps_per_second": "steps/s between the newest attempt's checkpoints",
    }
    rows = "".join(f"<dt>{_e(names[k])}</dt><dd>{value_text(v)}</dd>" for k, v in speed.items() if v is not None)
    return f'<dl class="inputs">{rows}</dl>' if rows else '<p class="note">Not known yet.</p>'


def settings_table(settings: dict) -> str:
    if not settings:
        return '<p class="note">Not recorded (the job writes them under <code>_report/</code> as it starts).</p>'
    published = redact(settings)
    shown = {name: value for name, value in sorted(published.items()) if value is not None}
    rows = []
    for name, value in shown.items():
        cell = (
            f'<span class="redacted">{_e(value)}</span>' if value == REDACTED else f"<code>{value_text(value)}</code>"
        )
        rows.append(f"<tr><td><code>{_e(name)}</code></td><td>{cell}</td></tr>")
    unset = len(published) - len(shown)
    summary = f"{len(rows)} settings" + (f" ({unset} unset, not shown)" if unset else "")
    return f"<details open><summary>{summary}</summary><table>{''.join(rows)}</table></details>"


def render(report: dict) -> str:
    """The page for `report` (as `report.build` makes it)."""
    s = report["summary"]
    inputs = redact(report["inputs"])
    task = f" · {_e(inputs['FT_TASK'])}" if inputs.get("FT_TASK") else ""
    state = s["state"].replace(" ", "-")
    flag = ""
    if report["interruptions"]:
        flag = (
            f' <span class="flag">Red dashed lines</span> mark the {len(report["interruptions"])} interruption(s); '
            "hover one for the details."
        )
    inputs_rows = "".join(f"<dt>{_e(k)}</dt><dd><code>{value_text(v)}</code></dd>" for k, v in inputs.items())
    output = f"<br>output: <code>{_e(s['output_uri'])}</code>" if s["output_uri"] else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>finetune report: {_e(report["title"])}</title>
<style>{STYLE}</style></head>
<body><main>
<header><div class="eyebrow">finetune run report</div><h1>{_e(report["title"])}</h1>
<p class="meta"><span class="badge {_e(state)}">{_e(s["state"])}</span> as of {_e(s["as_of"])}{task}</p></header>
{cards(report)}
<h2>Curves</h2>
<p class="note">Every attempt on one step axis; the shaded bands are the attempts.{flag}</p>
{figures(report)}
<h2>Attempts and interruptions</h2>
{attempts_table(report)}
<h2>Throughput</h2>
{throughput_list(report)}
<h2>Model and data</h2>
{f'<dl class="inputs">{inputs_rows}</dl>' if inputs_rows else '<p class="note">Not recorded.</p>'}
<h2>Settings</h2>
{settings_table(report["settings"])}
<footer>checkpoints: <code>{_e(s["checkpoint_uri"])}</code>{output}<br>
Written by finetune; rebuild it any time with <code>finetune report URI</code>.</footer>
</main></body></html>
"""
