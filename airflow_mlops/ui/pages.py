"""The plugin's HTML pages, rendered on the server from ``ui.data``'s dicts: plain HTML, a little
CSS and inline SVG charts (``ui.charts``), no script. Inside the Airflow UI they are fragments that
the plugin's React view (``ui/static/mlops-view.js``) puts into Airflow's own page, no iframe:
links into Airflow stay in the window, links to MLflow open a new tab, and the colours and font
are Airflow's, light or dark. Opened at ``/mlops/...`` they are whole documents.

``airflow`` is the Airflow UI's base path (``""`` at the server's root): links to DAG runs are
``{airflow}/dags/<dag>/runs/<run>``; the plugin's places are ``{airflow}/plugin/mlops-models``,
``mlops-drift`` and the DAG tab ``{airflow}/dags/<dag>/plugin/mlops``.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

from airflow_mlops.ui import charts

# Scoped to .mlops: the same rules serve the fragment Airflow's UI shows and the whole document.
# Colours are Airflow's own (Chakra UI's semantic tokens, which follow its light and dark theme),
# with a light fallback where the page stands alone; the font is Airflow's (inherited).
STYLE = """
.mlops{--mlops-fg:var(--chakra-colors-fg,#1a1a1a);--mlops-muted:var(--chakra-colors-fg-muted,#5f6368);
--mlops-border:var(--chakra-colors-border,#ddd);--mlops-head:var(--chakra-colors-bg-muted,#f5f5f5);
--mlops-link:var(--chakra-colors-fg-info,#1565c0);--mlops-grid:var(--chakra-colors-border-muted,#e6e6e6);
--mlops-axis:var(--chakra-colors-border-emphasized,#999);--mlops-error-bg:var(--chakra-colors-bg-error,#fdecea);
color:var(--mlops-fg);font-size:14px;line-height:1.45}
.mlops a{color:var(--mlops-link);text-decoration:none}.mlops a:hover{text-decoration:underline}.mlops td a{white-space:nowrap}
.mlops h1{font-size:20px;font-weight:600;margin:0 0 12px}
.mlops h3{font-size:15px;font-weight:600;margin:16px 0 4px}
.mlops h2{font-size:17px;font-weight:600;margin:24px 0 8px;border-bottom:1px solid var(--mlops-border);padding-bottom:4px}
.mlops table{border-collapse:collapse;margin:8px 0 16px}.mlops th,.mlops td{border:1px solid var(--mlops-border);
padding:4px 8px;vertical-align:top;text-align:left}.mlops th{background:var(--mlops-head);font-weight:600}
.mlops td.num{text-align:right;font-variant-numeric:tabular-nums}
.mlops .badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;margin-right:4px;color:#fff}
.mlops .champion{background:#2e7d32}.mlops .previous-champion{background:#8d6e63}.mlops .alias{background:#1976d2}
.mlops .d-promoted,.mlops .d-restored{color:#2e7d32;font-weight:600}.mlops .d-rejected{color:#c62828;font-weight:600}
.mlops .d-defended,.mlops .d-replaced,.mlops .d-rolled-back{color:var(--mlops-muted);font-weight:600}
.mlops .d-awaiting-approval{color:#ef6c00;font-weight:600}.mlops .drifted{color:#c62828;font-weight:600}.mlops .ok{color:#2e7d32}.mlops .muted{color:var(--mlops-muted)}
.mlops .charts{display:flex;flex-wrap:wrap;gap:16px}.mlops svg.chart{color:var(--mlops-fg);max-width:100%;height:auto}
.mlops .error{border:1px solid #c62828;background:var(--mlops-error-bg);padding:12px;white-space:pre-wrap;
font-family:monospace}.mlops .note{border-left:3px solid var(--mlops-link);padding:4px 10px;margin:8px 0}
.mlops nav a{margin-right:12px}.mlops .detail{max-width:520px;font-size:12px}.mlops .params{font-size:12px}
.mlops .money{font-variant-numeric:tabular-nums}
"""
# The page standing alone (opened at /mlops/...): Airflow's tokens are not there, the system's
# light or dark preference picks the fallbacks.
DOCUMENT_STYLE = """
body{margin:16px;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
@media (prefers-color-scheme:dark){body{background:#18181b}.mlops{--chakra-colors-fg:#e4e4e7;
--chakra-colors-fg-muted:#a1a1aa;--chakra-colors-border:#3f3f46;--chakra-colors-bg-muted:#27272a;
--chakra-colors-fg-info:#90caf9;--chakra-colors-border-muted:#2f2f35;--chakra-colors-bg-error:#3b1212}}
"""
CHART_VERSIONS = 20  # a chart shows the latest this many versions; the table lists them all


def page(title: str, body: str, airflow: str = "", fragment: bool = False) -> str:
    """The page: with ``fragment``, the ``<div class="mlops">`` that the plugin's React view puts
    into Airflow's own page (``ui/static/mlops-view.js``); else a whole HTML document. Nav links go
    to the plugin's places in Airflow's UI."""
    nav = (f'<nav><a href="{escape(airflow)}/plugin/mlops-models">Models</a>'
           f'<a href="{escape(airflow)}/plugin/mlops-drift">Drift</a></nav>')
    content = f'<div class="mlops" data-title="{escape(title)}"><style>{STYLE}</style>{nav}<h1>{escape(title)}</h1>{body}</div>'
    if fragment:
        return content
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{DOCUMENT_STYLE}</style></head><body>{content}</body></html>')


def error(title: str, message: str, airflow: str = "", fragment: bool = False) -> str:
    """The page when MLflow cannot be read: the DependencyFailed message, no stack trace."""
    return page(title, f'<div class="error" role="alert">{escape(message)}</div>', airflow, fragment)


def mlflow_note(mlflow_ui: dict | None) -> str:
    """Where the "MLflow run" links point, when nobody set it (``ui.app.mlflow_ui``)."""
    if not mlflow_ui or mlflow_ui.get("configured"):
        return ""
    return (f'<p class="note mlflow-ui-note">"MLflow run" links open {escape(mlflow_ui["base"])}, a guess: run '
            f'<code>mlflow ui</code> there, or set your MLflow\'s address as <code>[mlops] mlflow_ui_url</code> '
            f'(<code>AIRFLOW__MLOPS__MLFLOW_UI_URL</code>) or <code>$AIRFLOW_MLOPS_MLFLOW_UI_URL</code> on the '
            f'api-server.</p>')


def when(text: str | None) -> str:
    """A UTC time as the data gives it (``YYYY-MM-DD HH:MM:SS UTC``), in a ``<time>`` element the
    React view shows in the user's chosen time zone."""
    if not text:
        return ""
    return f'<time datetime="{escape(when_iso(text) or "")}">{escape(text)}</time>'


def when_iso(text: str | None) -> str | None:
    """``YYYY-MM-DD HH:MM:SS UTC`` as ISO 8601 (``...T...Z``)."""
    return text.replace(" UTC", "Z").replace(" ", "T") if text else None


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _badges(aliases: Iterable[str]) -> str:
    out = []
    for alias in aliases:
        kind = alias if alias in ("champion", "previous-champion") else "alias"
        mark = "★ " if alias == "champion" else ""
        out.append(f'<span class="badge {kind}">{mark}{escape(alias)}</span>')
    return "".join(out)


def _link(url: str | None, text: str, external: bool = False) -> str:
    """A link into Airflow's UI (the same window; the React view routes it), or with ``external``
    to another site such as MLflow (a new tab)."""
    if not url:
        return escape(text)
    target = ' target="_blank" rel="noopener noreferrer"' if external else ""
    return f'<a href="{escape(url)}"{target}>{escape(text)}</a>'


def money(value: float | None, currency: str) -> str:
    """One format for every cost: six decimals and the currency code (``0.000885 USD``)."""
    return "—" if value is None else f'<span class="money">{value:,.6f} {escape(currency)}</span>'


def cost_text(cost: dict | None, prices: dict | None) -> str:
    if not cost:
        return '<span class="muted">not recorded</span>'
    currency = (prices or {}).get("currency") or "USD"
    text = (f'<b>{money(cost.get("total", 0), currency)}</b> = {_num(cost.get("gpu_hours"))} GPU-h, '
            f'{_num(cost.get("cpu_hours"))} CPU-h, {_num(cost.get("memory_gib_hours"))} GiB-h')
    if prices:
        text += (f'<br><span class="muted">prices: {money(prices.get("gpu_hour"), currency)}/GPU-h, '
                 f'{money(prices.get("cpu_hour"), currency)}/CPU-h, '
                 f'{money(prices.get("memory_gib_hour"), currency)}/GiB-h</span>')
    return text


def gpu_text(gpu: dict) -> str:
    if not gpu.get("available"):
        return f'<span class="no-gpu">no GPU</span> — <span class="muted">{escape(gpu.get("reason") or "")}</span>'
    parts = [f'utilization mean {_num(gpu.get("utilization_mean"), 3)} %',
             f'peak memory {_num(gpu.get("memory_peak_gib"), 3)} GiB',
             f'energy {_num(gpu.get("energy_kwh"), 3)} kWh',
             f'max temperature {_num(gpu.get("temperature_max_c"), 3)} °C']
    names = f'{escape(gpu["names"])}: ' if gpu.get("names") else ""
    return names + ", ".join(parts)


def _role(version: dict) -> str:
    if "champion" in version["aliases"]:
        return "champion"
    if "previous-champion" in version["aliases"]:
        return "previous-champion"
    return "rejected" if version.get("decision") == "rejected" else "other"


def gate_metrics(model: dict) -> tuple[list[str], dict[str, dict], dict[str, str]]:
    """The metrics to chart, the gate's first (compared, then thresholded, then the rest by name),
    with the gate's thresholds ``{metric: {min, max}}`` and compare directions of the newest
    validated version."""
    gate = next((v["gate"] for v in model["versions"] if v.get("gate")), None) or {}
    compare, thresholds = gate.get("compare") or {}, gate.get("thresholds") or {}
    names: list[str] = [*compare, *(m for m in thresholds if m not in compare)]
    for v in model["versions"]:
        names += [m for m in sorted(v["metrics"]) if m not in names]
    return names, thresholds, compare


def model_charts(model: dict, metrics: int = 3) -> str:
    """Bars per version (oldest left, the latest ``CHART_VERSIONS``): the gate's metrics first, the
    champion's value and the thresholds drawn as lines; then the training cost."""
    versions = list(reversed(model["versions"][:CHART_VERSIONS]))
    names, thresholds, compare = gate_metrics(model)
    champion = next((v for v in model["versions"] if v["version"] == model.get("champion")), None)
    svgs = []
    for name in names[:metrics]:
        lines: list[tuple[str, float]] = []
        if champion is not None and champion["metrics"].get(name) is not None:
            lines.append((f"champion v{champion['version']}", champion["metrics"][name]))
        for bound in ("min", "max"):
            if (thresholds.get(name) or {}).get(bound) is not None:
                lines.append((f"threshold {bound}", thresholds[name][bound]))
        role = (" (the gate compares it: " + compare[name] + " is better)" if name in compare
                else " (the gate's threshold)" if name in thresholds else "")
        svgs.append(charts.bars(f"{name} per version{role}", [(f"v{v['version']}", v["metrics"].get(name), _role(v))
                                                               for v in versions], lines=lines))
    if any(v["cost"] for v in versions):
        currency = next(((v["prices"] or {}).get("currency") for v in versions if v["prices"]), None) or "USD"
        svgs.append(charts.bars(f"training cost per version ({currency})",
                                [(f"v{v['version']}", (v["cost"] or {}).get("total"), _role(v)) for v in versions],
                                unit=f" {currency}", from_zero=True, fmt=lambda x: f"{x:,.6f}"))
    shown = (f'<p class="muted chart-window">The charts show the latest {CHART_VERSIONS} of '
             f'{len(model["versions"])} versions; the table below lists every one.</p>'
             if len(model["versions"]) > CHART_VERSIONS else "")
    return f'{shown}<div class="charts">{"".join(svgs)}</div>'


def _params(params: dict | None, inline: bool = False) -> str:
    if not params:
        return '<span class="muted">—</span>'
    sep = ", " if inline else "<br>"
    return f'<span class="params">{sep.join(f"{escape(k)} = {escape(str(v))}" for k, v in sorted(params.items()))}</span>'


def _decision(v: dict) -> str:
    if not v["decision"]:
        return '<span class="muted">not validated</span>'
    shown = f'<span class="d-{escape(v["decision"])}">{escape(v["decision"])}</span>'
    approval = v.get("approval")
    if approval:
        who = (f'by {escape(approval.get("by") or "")} at {escape(approval.get("at") or "")} UTC'
               if approval.get("by") else "(no answer before the timeout)")
        shown += f'<div class="approval">{escape(approval.get("decision") or "")} {who}</div>'
    return shown


def versions_table(model: dict, airflow: str) -> str:
    if not model["versions"]:
        return '<p class="muted no-versions">No version registered yet: every training so far failed (below).</p>'
    rows = []
    for v in model["versions"]:
        metrics = "<br>".join(f"{escape(k)} = {_num(x)}" for k, x in v["metrics"].items()) or "—"
        run = (_link(f"{airflow}{v['dag_run_url']}" if v["dag_run_url"] else None,
                     f"{v['dag_id']} / {v['dag_run_id']}") if v["dag_id"] else "—")
        rows.append(
            f'<tr class="version" data-version="{escape(v["version"])}"><td>v{escape(v["version"])} '
            f'{_badges(v["aliases"])}</td><td>{when(v["created"])}</td>'
            f'<td>{_decision(v)}<div class="detail">{escape(v["decision_detail"] or "")}</div></td>'
            f'<td>{metrics}</td><td>{_params(v.get("params"))}</td><td>{cost_text(v["cost"], v["prices"])}</td>'
            f'<td>{gpu_text(v["gpu"])}</td><td>{run}</td><td>{_link(v["mlflow_run_url"], "MLflow run", external=True)}'
            f'</td></tr>')
    return ('<table class="versions"><tr><th>version</th><th>registered</th><th>gate decision</th><th>metrics</th>'
            '<th>hyperparameters (run params)</th><th>training cost</th><th>GPU</th><th>made by DAG run</th><th>MLflow</th></tr>'
            + "".join(rows) + "</table>")


def failures_table(model: dict, airflow: str) -> str:
    """The model's latest training tries that Kubernetes ended (``data.failed_trainings``): when,
    the DAG run and try, Kubernetes' reason and the task's message; nothing when there are none."""
    failures = model.get("failed_trainings") or []
    if not failures:
        return ""
    rows = []
    for f in failures:
        run = _link(f"{airflow}{f['dag_run_url']}" if f["dag_run_url"] else None,
                    f"{f['dag_id']} / {f['dag_run_id']}") if f["dag_id"] else "—"
        rows.append(f'<tr class="failed-training"><td>{when(f["time"])}</td><td>{run}</td>'
                    f'<td class="num">{escape(f["try_number"] or "—")}</td>'
                    f'<td><span class="d-rejected">{escape(f["reason"] or "")}</span></td>'
                    f'<td><div class="detail">{escape(f["message"])}</div></td>'
                    f'<td>{_link(f["mlflow_run_url"], "MLflow run", external=True)}</td></tr>')
    return (f'<h3>Failed trainings</h3><p class="muted">The latest {len(failures)} training tr'
            f'{"y" if len(failures) == 1 else "ies"} that Kubernetes ended (out of memory, evicted, preempted, '
            'node lost): none registered a version.</p>'
            '<table class="failed-trainings"><tr><th>started</th><th>DAG run</th><th>try</th><th>reason</th>'
            '<th>message</th><th>MLflow</th></tr>' + "".join(rows) + "</table>")


def model_section(model: dict, airflow: str) -> str:
    champion = model["champion"]
    head = (f'<p>champion: <b class="champion-version">{"v" + escape(champion) if champion else "none yet"}</b>'
            + (f', previous champion: v{escape(model["previous_champion"])}' if model["previous_champion"] else "")
            + (' · DAG: ' + ", ".join(_link(f"{airflow}/dags/{d}", d) for d in model["dag_ids"])
               if model["dag_ids"] else "") + "</p>")
    return (f'<section class="model" id="model-{escape(model["name"])}"><h2>{escape(model["name"])}</h2>{head}'
            f'{model_charts(model)}{versions_table(model, airflow)}{failures_table(model, airflow)}</section>')


def models_page(models: list[dict], store: str, airflow: str = "", fragment: bool = False,
                mlflow_ui: dict | None = None) -> str:
    if not models:
        body = (f'<p>No registered model made by a pipeline yet in the MLflow store {escape(store)}. '
                'Run a pipeline with a train stage and its versions appear here.</p>')
    else:
        body = (f'<p class="muted">MLflow store: {escape(store)}</p>{mlflow_note(mlflow_ui)}'
                + "".join(model_section(m, airflow) for m in models))
    return page("Models", body, airflow, fragment)


def drift_section(monitor: dict, airflow: str) -> str:
    """The latest report (PSI and KS per feature, each beside its limit) and the PSI trend on a
    log scale with the stage's PSI threshold."""
    latest = monitor["latest"]
    limits = latest.get("limits") or {}
    own = limits.get("features") or {}
    rows = []
    for name, s in latest["features"].items():
        verdict = ("—" if s["drifted"] is None else
                   '<span class="drifted">drift</span>' if s["drifted"] else '<span class="ok">ok</span>')
        limit = own.get(name) or limits
        rows.append(f'<tr class="feature"><td>{escape(name)}</td><td class="num">{_num(s["psi"])}</td>'
                    f'<td class="num">{_num(limit.get("psi"))}</td><td class="num">{_num(s["ks"])}</td>'
                    f'<td class="num">{_num(limit.get("ks"))}</td><td>{verdict}</td></tr>')
    trend = monitor["trend"]
    features = list(latest["features"])
    svg = charts.lines(f"PSI per feature, last {len(trend)} run(s)",
                       [(t["time"][:16] if t["time"] else "?", when_iso(t["time"])) for t in trend],
                       {f: [t["psi"].get(f) for t in trend] for f in features}, limits.get("psi"), log=True)
    run = (_link(f"{airflow}/dags/{monitor['dag_id']}/runs/{latest['dag_run_id']}", latest["dag_run_id"])
           if latest.get("dag_run_id") else escape(latest["run_id"]))
    count = latest.get("drifted_count")
    return (f'<section class="monitor"><h2>{escape(monitor["dag_id"])} · {escape(monitor["task_id"])}</h2>'
            f'<p>latest run {run} at {when(latest["time"])}: '
            f'<b>{"?" if count is None else int(count)} of {len(features)} features drifted</b></p>'
            f'<div class="charts"><table class="drift"><tr><th>feature</th><th>PSI</th><th>PSI limit</th><th>KS</th>'
            f'<th>KS limit</th><th>verdict</th></tr>{"".join(rows)}</table>{svg}</div></section>')


def drift_page(monitors: list[dict], store: str, airflow: str = "", fragment: bool = False) -> str:
    if not monitors:
        body = f'<p>No drift report yet in the MLflow store {escape(store)}: run a pipeline with a drift stage.</p>'
    else:
        body = (f'<p class="muted">MLflow store: {escape(store)}</p>'
                + "".join(drift_section(m, airflow) for m in monitors))
    return page("Drift", body, airflow, fragment)


def dag_page(summary: dict, airflow: str = "", fragment: bool = False, mlflow_ui: dict | None = None) -> str:
    """The DAG tab: the pipeline's model(s), the latest version's gate decision, its cost."""
    parts = []
    for m in summary["models"]:
        v = m["latest"]
        parts.append(
            f'<section class="model"><h2>{escape(m["name"])}</h2>'
            f'<p>champion: <b class="champion-version">{"v" + escape(m["champion"]) if m["champion"] else "none"}</b>'
            f' · latest version v{escape(v["version"])} {_badges(v["aliases"])} ({when(v["created"])}): '
            f'{_decision(v)}</p><p class="detail">{escape(v["decision_detail"] or "")}</p>'
            f'<p>hyperparameters (run params): {_params(v.get("params"), inline=True)}</p>'
            f'<p>training cost: {cost_text(v["cost"], v["prices"])}</p><p>GPU: {gpu_text(v["gpu"])}</p>'
            f'{model_charts(m, metrics=2)}'
            f'<p>{_link(airflow + v["dag_run_url"] if v["dag_run_url"] else None, "DAG run")} · '
            f'{_link(v["mlflow_run_url"], "MLflow run", external=True)} · '
            f'{_link(airflow + "/plugin/mlops-models#model-" + m["name"], "all versions")}</p></section>')
    for monitor in summary["drift"]:
        parts.append(drift_section(monitor, airflow))
    if not parts:
        parts.append(f'<p>DAG {escape(summary["dag_id"])} has registered no model and run no drift check '
                     'tracked in MLflow.</p>')
    elif summary["models"]:
        parts.insert(0, mlflow_note(mlflow_ui))
    return page(f"MLOps · {summary['dag_id']}", "".join(parts), airflow, fragment)
