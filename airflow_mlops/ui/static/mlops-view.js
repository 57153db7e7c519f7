// airflow-mlops: the MLOps places inside Airflow's UI (the plugin's react_apps: the "Models" and
// "Drift" entries of the Browse menu, the "MLOps" and "Pipeline YAML" tabs of a DAG).
//
// A plain ES module, nothing to build: React and React Router are the ones Airflow's page already
// runs (it sets globalThis.React and globalThis.ReactRouterDOM for plugins). The view fetches the
// server-rendered page (/mlops/<page>?fragment=1, behind Airflow's auth like the rest of the app)
// and puts it into Airflow's page, no iframe, so that:
//   - links into Airflow (a DAG, a DAG run, the other MLOps pages) navigate in the same window
//     through Airflow's router; links to MLflow carry target="_blank" and open a new tab;
//   - the page's colours are Airflow's theme tokens (CSS variables), light or dark as the user chose,
//     and the font is Airflow's;
//   - times are shown in the time zone chosen in Airflow's user menu (the same "timezone" entry of
//     the browser's localStorage that Airflow reads), else the browser's.
// Which page: the "view" parameter of this module's own URL (models, drift, dag or source).

const React = globalThis.React;
const { createElement: h, useEffect, useRef, useState } = React;
const here = new URL(import.meta.url);
const view = here.searchParams.get("view") || "models";
const mount = new URL("..", here); // .../mlops/

function pageUrl(props) {
  const dag = `dags/${encodeURIComponent(props.dagId || "")}`;
  const path = view === "dag" ? dag : view === "source" ? `${dag}/source` : view;
  const url = new URL(path, mount);
  url.searchParams.set("fragment", "1");
  return url;
}

export function userTimezone() {
  try {
    const raw = globalThis.localStorage?.getItem("timezone");
    if (!raw) return undefined;
    let zone;
    try { zone = JSON.parse(raw); } catch { zone = raw; }
    new Intl.DateTimeFormat("en", { timeZone: zone }); // throws for a zone the browser does not know
    return zone;
  } catch {
    return undefined;
  }
}

function localize(root) {
  const timeZone = userTimezone();
  const parts = { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
                  hourCycle: "h23", timeZone, timeZoneName: "short" };
  const full = new Intl.DateTimeFormat("sv-SE", { ...parts, second: "2-digit" });
  const short = new Intl.DateTimeFormat("sv-SE", parts);
  for (const el of root.querySelectorAll("time[datetime], [data-datetime]")) {
    const iso = el.getAttribute("datetime") || el.getAttribute("data-datetime");
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) continue;
    el.textContent = (el.tagName.toLowerCase() === "time" ? full : short).format(date);
    el.setAttribute("title", `${iso} (UTC)`);
  }
}

function basePath() {
  return new URL(document.baseURI).pathname.replace(/\/$/, "");
}

function MlopsView(props) {
  const navigate = globalThis.ReactRouterDOM?.useNavigate?.();
  const ref = useRef(null);
  const [page, setPage] = useState({ html: null, failed: null });
  const key = view === "dag" || view === "source" ? props.dagId : view;

  useEffect(() => {
    let live = true;
    setPage({ html: null, failed: null });
    fetch(pageUrl(props), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then((response) => response.text())
      .then((html) => live && setPage({ html, failed: null }))
      .catch((error) => live && setPage({ html: null, failed: String(error) }));
    return () => { live = false; };
  }, [key]);

  useEffect(() => {
    const root = ref.current;
    if (!root || page.html === null) return;
    localize(root);
    if (globalThis.location.hash) {
      document.getElementById(decodeURIComponent(globalThis.location.hash.slice(1)))?.scrollIntoView();
    }
  }, [page.html]);

  const onClick = (event) => {
    const link = event.target.closest?.("a[href]");
    if (!link || link.target || event.defaultPrevented || event.button !== 0
        || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const url = new URL(link.getAttribute("href"), document.baseURI);
    const base = basePath();
    if (url.origin !== globalThis.location.origin || !url.pathname.startsWith(`${base}/`) || !navigate) return;
    event.preventDefault();
    navigate(url.pathname.slice(base.length) + url.search + url.hash);
  };

  if (page.failed) {
    return h("div", { className: "mlops-view", role: "alert" }, `The MLOps page could not be loaded: ${page.failed}`);
  }
  return h("div", {
    ref, onClick, className: "mlops-view", "data-view": view, style: { padding: "4px 8px" },
    dangerouslySetInnerHTML: { __html: page.html ?? "<p>Loading…</p>" },
  });
}

globalThis.AirflowPlugin = MlopsView;
export default MlopsView;
