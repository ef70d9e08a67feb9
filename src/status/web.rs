//! The web dashboard `bento serve` answers on its own address (`--dashboard-listen`, by
//! default loopback only, never the hosts' cache port): `/` (the fleet table, refreshed every 2 s from `/api/status`), `/hosts/<name>` (one
//! host: its state, release history and reports with their logs), `/api/status` (the JSON
//! of `bento status --json`) and `/api/hosts/<name>`. Self-contained: inline CSS and JS, no
//! outside assets. Everything an agent wrote (reasons, logs) is HTML-escaped or set as text.
//!
//! Every other path is 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::source::StatusSource;
use super::view::{HostStatus, ago};
use super::{StatusError, collect};
use crate::deploy::HistoryEntry;
use crate::report::Report;

/// Reports shown on a host's page, newest first.
const REPORTS_SHOWN: usize = 50;

/// Serves the dashboard on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    source: Arc<StatusSource>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = router(source).fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// The dashboard's routes.
pub fn router(source: Arc<StatusSource>) -> axum::Router {
    axum::Router::new()
        .route("/", get(index))
        .route("/api/status", get(api_status))
        .route("/hosts/{name}", get(host_page))
        .route("/api/hosts/{name}", get(api_host))
        .with_state(source)
}

/// One host in detail.
#[derive(Debug, Serialize)]
pub struct HostDetail {
    pub schema: u32,
    pub status: HostStatus,
    /// Published releases, newest first.
    pub history: Vec<HistoryEntry>,
    /// Reports, newest first (at most 50).
    pub reports: Vec<Report>,
}

enum WebError {
    UnknownHost,
    Status(StatusError),
    Task(String),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match self {
            WebError::UnknownHost => (StatusCode::NOT_FOUND, "no such host\n").into_response(),
            WebError::Status(e) => {
                tracing::warn!(error = %e, "dashboard cannot read the state directory");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot read the fleet's state: {e}\n"),
                )
                    .into_response()
            }
            WebError::Task(e) => {
                tracing::warn!(error = %e, "dashboard task failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Task(e.to_string()))?
}

fn detail(source: &StatusSource, host: &str) -> Result<HostDetail, WebError> {
    if !source.knows(host) {
        return Err(WebError::UnknownHost);
    }
    let status = source.host(host).map_err(WebError::Status)?;
    let mut history = crate::deploy::history::read(&source.state.history(host))
        .map_err(|e| {
            WebError::Status(StatusError::History {
                host: host.to_owned(),
                problem: e.to_string(),
            })
        })?
        .entries;
    history.reverse();
    let mut reports =
        collect::reports(&source.state, host, REPORTS_SHOWN).map_err(WebError::Status)?;
    reports.sort_by_key(|r| std::cmp::Reverse(r.finished_ms));
    Ok(HostDetail {
        schema: super::SCHEMA,
        status,
        history,
        reports,
    })
}

async fn api_status(State(source): State<Arc<StatusSource>>) -> Result<Response, WebError> {
    let fleet = blocking(move || source.fleet().map_err(WebError::Status)).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(&*fleet)).into_response())
}

async fn api_host(
    State(source): State<Arc<StatusSource>>,
    Path(name): Path<String>,
) -> Result<Response, WebError> {
    let d = blocking(move || detail(&source, &name)).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(d)).into_response())
}

async fn index(State(source): State<Arc<StatusSource>>) -> Result<Html<String>, WebError> {
    let fleet = blocking(move || source.fleet().map_err(WebError::Status)).await?;
    let rows: String = fleet.hosts.iter().map(row_html).collect();
    Ok(Html(
        INDEX.replace("{{STYLE}}", STYLE).replace("{{ROWS}}", &rows),
    ))
}

async fn host_page(
    State(source): State<Arc<StatusSource>>,
    Path(name): Path<String>,
) -> Result<Html<String>, WebError> {
    let d = blocking(move || detail(&source, &name)).await?;
    Ok(Html(host_html(&d)))
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_owned())
}

/// The fleet table's row of a host (the same cells the script draws).
fn row_html(h: &HostStatus) -> String {
    let state = h.state.as_str();
    format!(
        "<tr data-host=\"{host}\"><td><a href=\"/hosts/{host}\">{host}</a></td><td class=\"state s-{state}\">{state}</td><td>{desired}</td><td class=\"path\">{running}</td><td>{seen}</td><td>{released}</td><td class=\"err\">{error}</td></tr>\n",
        host = escape(&h.host),
        desired = or_dash(h.desired.as_ref().map(|d| format!("g{}", d.generation))),
        running = escape(&or_dash(h.running.clone())),
        seen = or_dash(h.seconds_since_seen.map(|s| format!("{} ago", ago(s)))),
        released = or_dash(h.seconds_since_release.map(|s| format!("{} ago", ago(s)))),
        error = escape(h.last_error.as_deref().unwrap_or("")),
    )
}

fn host_html(d: &HostDetail) -> String {
    let s = &d.status;
    let mut body = format!(
        "<p><a href=\"/\">&larr; fleet</a></p><h1>{host} <span class=\"state s-{state}\" id=\"state\">{state}</span></h1>\n<table class=\"kv\">\n<tr><th>desired</th><td class=\"path\">{desired}</td></tr>\n<tr><th>running</th><td class=\"path\">{running}</td></tr>\n<tr><th>current generation</th><td>{current}</td></tr>\n<tr><th>last seen</th><td>{seen}</td></tr>\n<tr><th>last error</th><td class=\"err\">{error}</td></tr>\n</table>\n",
        host = escape(&s.host),
        state = s.state.as_str(),
        desired = escape(&or_dash(
            s.desired
                .as_ref()
                .map(|r| format!("g{} {}", r.generation, r.store_path))
        )),
        running = escape(&or_dash(s.running.clone())),
        current = or_dash(s.current_generation.map(|g| format!("g{g}"))),
        seen = or_dash(s.seconds_since_seen.map(|x| format!("{} ago", ago(x)))),
        error = escape(s.last_error.as_deref().unwrap_or("")),
    );
    body.push_str("<h2>Releases</h2>\n<table><tr><th>generation</th><th>created</th><th>system</th><th></th></tr>\n");
    for e in &d.history {
        body.push_str(&format!(
            "<tr><td>g{}</td><td class=\"time\" data-unix=\"{}\"></td><td class=\"path\">{}</td><td>{}</td></tr>\n",
            e.generation,
            e.created,
            escape(&e.store_path),
            e.rollback_of
                .map(|g| format!("rollback to g{g}"))
                .unwrap_or_default(),
        ));
    }
    body.push_str("</table>\n<h2>Reports</h2>\n");
    for (i, r) in d.reports.iter().enumerate() {
        // The newest report is shown open.
        let open = if i == 0 { " open" } else { "" };
        body.push_str(&format!(
            "<details class=\"report\"{open}><summary><span class=\"time\" data-unix=\"{t}\"></span> g{g} <span class=\"outcome o-{o}\">{o}</span> {reason}</summary><pre>{log}</pre></details>\n",
            t = r.finished_ms / 1000,
            g = r.generation,
            o = r.outcome.as_str(),
            reason = escape(r.reason.as_deref().unwrap_or("")),
            log = escape(&r.log),
        ));
    }
    HOST.replace("{{STYLE}}", STYLE)
        .replace("{{TITLE}}", &escape(&s.host))
        .replace("{{BODY}}", &body)
}

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
table { border-collapse: collapse; background: #fff; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid #e4e4e4; vertical-align: top; }
th { background: #f0f0f0; }
.path { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.err { color: #a00; }
.state, .outcome { font-weight: 600; padding: 1px 6px; border-radius: 3px; white-space: nowrap; }
.s-up-to-date, .o-applied, .o-up-to-date { background: #d8f5d8; color: #105010; }
.s-pending, .s-deploying, .s-unconfirmed, .o-deploying, .o-unconfirmed { background: #dde8ff; color: #123f8f; }
.s-activation-failed, .s-rolled-back, .s-copy-failed, .s-refused, .o-activation-failed, .o-rolled-back, .o-copy-failed, .o-refused, .o-recovered { background: #ffdada; color: #8a0d0d; }
.s-retry-later, .s-stale, .o-retry-later { background: #fff0c8; color: #6b4d00; }
.s-never-seen, .s-not-deployed { background: #eee; color: #555; }
pre { background: #111; color: #ddd; padding: 8px; overflow-x: auto; max-height: 30em; }
#summary { margin: .5em 0 1em; }
"#;

const INDEX: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Bento fleet</title>
<style>{{STYLE}}</style></head>
<body>
<h1>Bento fleet</h1>
<div id="summary"></div>
<table id="fleet">
<thead><tr><th>host</th><th>state</th><th>desired</th><th>running</th><th>last seen</th><th>released</th><th>last error</th></tr></thead>
<tbody id="hosts">
{{ROWS}}</tbody></table>
<p id="updated"></p>
<script>
"use strict";
function ago(s) {
  if (s === null || s === undefined) return "-";
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.floor(s / 60) + "m ago";
  if (s < 86400) return Math.floor(s / 3600) + "h ago";
  return Math.floor(s / 86400) + "d ago";
}
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}
function draw(fleet) {
  const body = document.getElementById("hosts");
  const rows = [];
  const counts = {};
  for (const h of fleet.hosts) {
    counts[h.state] = (counts[h.state] || 0) + 1;
    const tr = document.createElement("tr");
    tr.dataset.host = h.host;
    const a = document.createElement("a");
    a.href = "/hosts/" + encodeURIComponent(h.host);
    a.textContent = h.host;
    cell(tr, "").appendChild(a);
    cell(tr, h.state, "state s-" + h.state);
    cell(tr, h.desired ? "g" + h.desired.generation : "-");
    cell(tr, h.running || "-", "path");
    cell(tr, ago(h.seconds_since_seen));
    cell(tr, ago(h.seconds_since_release));
    cell(tr, h.last_error || "", "err");
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("summary").textContent =
    Object.keys(counts).sort().map(k => counts[k] + " " + k).join(", ");
  document.getElementById("updated").textContent =
    "updated " + new Date(fleet.now * 1000).toLocaleTimeString();
}
async function refresh() {
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    if (r.ok) draw(await r.json());
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the server: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"#;

const HOST: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{TITLE}} - Bento</title>
<style>{{STYLE}}</style></head>
<body>
{{BODY}}
<script>
"use strict";
for (const el of document.querySelectorAll(".time")) {
  el.textContent = new Date(Number(el.dataset.unix) * 1000).toISOString().replace("T", " ").slice(0, 19);
}
let last = null;
async function refresh() {
  try {
    const r = await fetch("/api" + location.pathname, { cache: "no-store" });
    if (!r.ok) return;
    const d = await r.json();
    const key = JSON.stringify([d.status.state, d.history.length, d.reports.length]);
    if (last !== null && key !== last) location.reload();
    last = key;
  } catch (e) {}
}
refresh();
setInterval(refresh, 2000);
</script>
</body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
