"""The plugin's HTML pages, rendered on the server from ``ui.data``'s dicts: plain HTML, a little
CSS and inline SVG charts (``ui.charts``), no script. They open inside the Airflow UI (an iframe of
its nav entries and DAG tab), so links into Airflow target the whole window.

``airflow`` is the Airflow UI's base path (``""`` at the server's root): links to DAG runs are
``{airflow}/dags/<dag>/runs/<run>``; the plugin's own pages are ``{airflow}/mlops/...``.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterable

from airflow_mlops.ui import charts

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:16px;color:#1a1a1a;font-size:14px}
h1{font-size:20px;margin:0 0 12px}h2{font-size:17px;margin:24px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ddd;padding:4px 8px;vertical-align:top;
text-align:left}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;margin-right:4px;color:#fff}
.champion{background:#2e7d32}.previous-champion{background:#8d6e63}.alias{background:#1976d2}
.d-promoted,.d-restored{color:#2e7d32;font-weight:600}.d-rejected{color:#c62828;font-weight:600}
.d-defended,.d-replaced,.d-rolled-back{color:#555;font-weight:600}.drifted{color:#c62828;font-weight:600}
.ok{color:#2e7d32}.muted{color:#666}.charts{display:flex;flex-wrap:wrap;gap:16px}
.error{border:1px solid #c62828;background:#fdecea;padding:12px;white-space:pre-wrap;font-family:monospace}
nav a{margin-right:12px}.detail{max-width:520px;font-size:12px}
"""


def page(title: str, body: str, airflow: str = "") -> str:
    """A whole HTML document with the plugin's nav links."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<style>{STYLE}</style></head><body>'
            f'<nav><a href="{escape(airflow)}/mlops/models">Models</a><a href="{escape(airflow)}/mlops/drift">Drift</a>'
            f'</nav><h1>{escape(title)}</h1>{body}</body></html>')


def error(title: str, message: str, airflow: str = "") -> str:
    """The page when MLflow cannot be read: the DependencyFailed message, no stack trace."""
    return page(title, f'<div class="error" role="alert">{escape(message)}</div>', airflow)


def _num(value: Any, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _badges(aliases: Iterable[str]) -> str:
    out = []
    for alias in aliases:
        kind = alias if alias in ("champion", "previous-champion") else "alias"
        mark = "★ " if alias == "champion" else ""
        out.append(f'<span class="badge {kind}">{mark}{escape(alias)}</span>')
    return "".join(out)


def _link(url: str | None, text: str, top: bool) -> str:
    if not url:
        return escape(text)
    target = 'target="_top"' if top else 'target="_blank" rel="noopener"'
    return f'<a href="{escape(url)}" {target}>{escape(text)}</a>'


def cost_text(cost: dict | None, prices: dict | None) -> str:
    if not cost:
        return '<span class="muted">not recorded</span>'
    text = (f'<b class="money">{cost.get("total", 0):.4f}</b> = {_num(cost.get("gpu_hours"))} GPU-h, '
            f'{_num(cost.get("cpu_hours"))} CPU-h, {_num(cost.get("memory_gib_hours"))} GiB-h')
    if prices:
        text += (f'<br><span class="muted">prices: {_num(prices.get("gpu_hour"))}/GPU-h, '
                 f'{_num(prices.get("cpu_hour"))}/CPU-h, {_num(prices.get("memory_gib_hour"))}/GiB-h</span>')
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


def model_charts(model: dict, metrics: int = 3) -> str:
    """Bars per version (oldest left): the first ``metrics`` model metrics, and the cost."""
    versions = list(reversed(model["versions"]))
    names: list[str] = []
    for v in versions:
        names += [m for m in v["metrics"] if m not in names]
    svgs = [charts.bars(f"{name} per version", [(f"v{v['version']}", v["metrics"].get(name), _role(v))
                                                 for v in versions]) for name in names[:metrics]]
    if any(v["cost"] for v in versions):
        svgs.append(charts.bars("training cost per version", [(f"v{v['version']}", (v["cost"] or {}).get("total"),
                                                               _role(v)) for v in versions]))
    return f'<div class="charts">{"".join(svgs)}</div>'


def versions_table(model: dict, airflow: str) -> str:
    rows = []
    for v in model["versions"]:
        metrics = "<br>".join(f"{escape(k)} = {_num(x)}" for k, x in v["metrics"].items()) or "—"
        run = (_link(f"{airflow}{v['dag_run_url']}" if v["dag_run_url"] else None,
                     f"{v['dag_id']} / {v['dag_run_id']}", top=True) if v["dag_id"] else "—")
        decision = (f'<span class="d-{escape(v["decision"])}">{escape(v["decision"])}</span>'
                    if v["decision"] else '<span class="muted">not validated</span>')
        rows.append(
            f'<tr class="version" data-version="{escape(v["version"])}"><td>v{escape(v["version"])} '
            f'{_badges(v["aliases"])}</td><td>{escape(v["created"] or "")}</td>'
            f'<td>{decision}<div class="detail">{escape(v["decision_detail"] or "")}</div></td>'
            f'<td>{metrics}</td><td>{cost_text(v["cost"], v["prices"])}</td><td>{gpu_text(v["gpu"])}</td>'
            f'<td>{run}</td><td>{_link(v["mlflow_run_url"], "MLflow run", top=False)}</td></tr>')
    return ('<table class="versions"><tr><th>version</th><th>registered</th><th>gate decision</th><th>metrics</th>'
            '<th>training cost</th><th>GPU</th><th>made by DAG run</th><th>MLflow</th></tr>'
            + "".join(rows) + "</table>")


def model_section(model: dict, airflow: str) -> str:
    champion = model["champion"]
    head = (f'<p>champion: <b class="champion-version">{"v" + escape(champion) if champion else "none yet"}</b>'
            + (f', previous champion: v{escape(model["previous_champion"])}' if model["previous_champion"] else "")
            + (' · DAG: ' + ", ".join(_link(f"{airflow}/dags/{d}", d, top=True) for d in model["dag_ids"])
               if model["dag_ids"] else "") + "</p>")
    return (f'<section class="model" id="model-{escape(model["name"])}"><h2>{escape(model["name"])}</h2>{head}'
            f'{model_charts(model)}{versions_table(model, airflow)}</section>')


def models_page(models: list[dict], store: str, airflow: str = "") -> str:
    if not models:
        body = (f'<p>No registered model made by a pipeline yet in the MLflow store {escape(store)}. '
                'Run a pipeline with a train stage and its versions appear here.</p>')
    else:
        body = (f'<p class="muted">MLflow store: {escape(store)}</p>'
                + "".join(model_section(m, airflow) for m in models))
    return page("Models", body, airflow)


def drift_section(monitor: dict, airflow: str, threshold: float | None = None) -> str:
    latest = monitor["latest"]
    rows = []
    for name, s in latest["features"].items():
        verdict = ("—" if s["drifted"] is None else
                   '<span class="drifted">drift</span>' if s["drifted"] else '<span class="ok">ok</span>')
        rows.append(f'<tr class="feature"><td>{escape(name)}</td><td class="num">{_num(s["psi"])}</td>'
                    f'<td class="num">{_num(s["ks"])}</td><td>{verdict}</td></tr>')
    trend = monitor["trend"]
    features = list(latest["features"])
    svg = charts.lines(f"PSI per feature, last {len(trend)} run(s)", [t["time"][5:19] if t["time"] else "?"
                                                                       for t in trend],
                       {f: [t["psi"].get(f) for t in trend] for f in features}, threshold)
    run = (_link(f"{airflow}/dags/{monitor['dag_id']}/runs/{latest['dag_run_id']}", latest["dag_run_id"], top=True)
           if latest.get("dag_run_id") else escape(latest["run_id"]))
    count = latest.get("drifted_count")
    return (f'<section class="monitor"><h2>{escape(monitor["dag_id"])} · {escape(monitor["task_id"])}</h2>'
            f'<p>latest run {run} at {escape(latest["time"] or "")}: '
            f'<b>{"?" if count is None else int(count)} of {len(features)} features drifted</b></p>'
            f'<div class="charts"><table class="drift"><tr><th>feature</th><th>PSI</th><th>KS</th><th>verdict</th>'
            f'</tr>{"".join(rows)}</table>{svg}</div></section>')


def drift_page(monitors: list[dict], store: str, airflow: str = "") -> str:
    if not monitors:
        body = f'<p>No drift report yet in the MLflow store {escape(store)}: run a pipeline with a drift stage.</p>'
    else:
        body = (f'<p class="muted">MLflow store: {escape(store)}</p>'
                + "".join(drift_section(m, airflow) for m in monitors))
    return page("Drift", body, airflow)


def dag_page(summary: dict, airflow: str = "") -> str:
    """The DAG tab: the pipeline's model(s), the latest version's gate decision, its cost."""
    parts = []
    for m in summary["models"]:
        v = m["latest"]
        decision = (f'<span class="d-{escape(v["decision"])}">{escape(v["decision"])}</span>' if v["decision"]
                    else '<span class="muted">not validated</span>')
        parts.append(
            f'<section class="model"><h2>{escape(m["name"])}</h2>'
            f'<p>champion: <b class="champion-version">{"v" + escape(m["champion"]) if m["champion"] else "none"}</b>'
            f' · latest version v{escape(v["version"])} {_badges(v["aliases"])} ({escape(v["created"] or "")}): '
            f'{decision}</p><p class="detail">{escape(v["decision_detail"] or "")}</p>'
            f'<p>training cost: {cost_text(v["cost"], v["prices"])}</p><p>GPU: {gpu_text(v["gpu"])}</p>'
            f'{model_charts(m, metrics=1)}'
            f'<p>{_link(airflow + v["dag_run_url"] if v["dag_run_url"] else None, "DAG run", top=True)} · '
            f'{_link(v["mlflow_run_url"], "MLflow run", top=False)} · '
            f'<a href="{escape(airflow)}/mlops/models#model-{escape(m["name"])}">all versions</a></p></section>')
    for monitor in summary["drift"]:
        parts.append(drift_section(monitor, airflow))
    if not parts:
        parts.append(f'<p>DAG {escape(summary["dag_id"])} has registered no model and run no drift check '
                     'tracked in MLflow.</p>')
    return page(f"MLOps · {summary['dag_id']}", "".join(parts), airflow)
