//! The dashboard's two pages, written with `maud`: HTML templates compiled with the code,
//! where every `(value)` spliced in is HTML-escaped, and raw markup needs an explicit
//! `PreEscaped` (used only for the CSS and scripts below, which are ours and static).
//! Chosen over askama because the pages are small and built from Rust values: in maud the
//! markup is Rust, so the compiler checks every field and every closed element, there is no
//! second template language or template directory, and what is not escaped is greppable.
//! (maud quotes every attribute with `"`, which it escapes; `'` needs no escaping there.)
//!
//! Everything an agent wrote (running system, reasons, logs) reaches a page through a
//! splice; the fleet page's script redraws rows with `textContent`, never `innerHTML`.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::view::{FleetStatus, HostStatus, ago};
use super::web::HostDetail;

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".to_owned())
}

fn page(title: &str, body: Markup, script: &'static str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                (body)
                script { (PreEscaped(script)) }
            }
        }
    }
}

/// `/`: the fleet table (the same cells the script draws every 2 s).
pub fn fleet(fleet: &FleetStatus) -> Markup {
    let body = html! {
        h1 { "Bento fleet" }
        div #summary {}
        p #rollout { (fleet.rollout.as_ref().map_or("", |r| r.headline.as_str())) }
        table #fleet {
            thead {
                tr {
                    th { "host" } th { "state" } th { "desired" } th { "running" }
                    th { "last seen" } th { "released" } th { "last error" }
                }
            }
            tbody #hosts {
                @for h in &fleet.hosts { (row(h)) }
            }
        }
        p #updated {}
    };
    page("Bento fleet", body, INDEX_SCRIPT)
}

fn row(h: &HostStatus) -> Markup {
    let state = h.state.as_str();
    html! {
        tr data-host=(h.host) {
            td { a href={ "/hosts/" (h.host) } { (h.host) } }
            td class={ "state s-" (state) } { (state) }
            td { (or_dash(h.desired.as_ref().map(desired_text))) }
            td.path { (or_dash(h.running.clone())) }
            td { (or_dash(h.seconds_since_seen.map(|s| format!("{} ago", ago(s))))) }
            td { (or_dash(h.seconds_since_release.map(|s| format!("{} ago", ago(s))))) }
            td.err { (h.last_error.as_deref().unwrap_or("")) }
        }
    }
}

/// `g7`, or `g7 @0123abcd` when the release's commit is known.
fn desired_text(d: &crate::status::view::Desired) -> String {
    match &d.commit {
        Some(c) => format!("g{} @{c}", d.generation),
        None => format!("g{}", d.generation),
    }
}

/// `/hosts/<name>`: one host, its releases and its reports with their logs.
pub fn host(d: &HostDetail) -> Markup {
    let s = &d.status;
    let state = s.state.as_str();
    let body = html! {
        p { a href="/" { "\u{2190} fleet" } }
        h1 { (s.host) " " span #state class={ "state s-" (state) } { (state) } }
        table.kv {
            tr {
                th { "desired" }
                td.path { (or_dash(s.desired.as_ref().map(|r| format!("g{} {}", r.generation, r.store_path)))) }
            }
            tr { th { "running" } td.path { (or_dash(s.running.clone())) } }
            tr { th { "current generation" } td { (or_dash(s.current_generation.map(|g| format!("g{g}")))) } }
            tr { th { "last seen" } td { (or_dash(s.seconds_since_seen.map(|x| format!("{} ago", ago(x))))) } }
            tr { th { "last error" } td.err { (s.last_error.as_deref().unwrap_or("")) } }
        }
        h2 { "Releases" }
        table {
            tr { th { "generation" } th { "created" } th { "system" } th {} }
            @for e in &d.history {
                tr {
                    td { "g" (e.generation) }
                    td.time data-unix=(e.created) {}
                    td.path { (e.store_path) }
                    td { @if let Some(g) = e.rollback_of { "rollback to g" (g) } }
                }
            }
        }
        h2 { "Reports" }
        @for (i, r) in d.reports.iter().enumerate() {
            // The newest report is shown open.
            details.report open[i == 0] {
                summary {
                    span.time data-unix=(r.finished_ms / 1000) {}
                    " g" (r.generation) " "
                    span class={ "outcome o-" (r.outcome.as_str()) } { (r.outcome.as_str()) }
                    " " (r.reason.as_deref().unwrap_or(""))
                }
                pre { (r.log) }
            }
        }
    };
    page(&format!("{} - Bento", s.host), body, HOST_SCRIPT)
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
.s-rollback-failed, .o-rollback-failed { background: #a00000; color: #fff; }
.s-retry-later, .s-stale, .o-retry-later { background: #fff0c8; color: #6b4d00; }
.s-never-seen, .s-not-deployed { background: #eee; color: #555; }
pre { background: #111; color: #ddd; padding: 8px; overflow-x: auto; max-height: 30em; }
#summary { margin: .5em 0 1em; }
"#;

const INDEX_SCRIPT: &str = r#"
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
    cell(tr, h.desired
      ? "g" + h.desired.generation + (h.desired.commit ? " @" + h.desired.commit : "")
      : "-");
    cell(tr, h.running || "-", "path");
    cell(tr, ago(h.seconds_since_seen));
    cell(tr, ago(h.seconds_since_release));
    cell(tr, h.last_error || "", "err");
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("summary").textContent =
    Object.keys(counts).sort().map(k => counts[k] + " " + k).join(", ");
  document.getElementById("rollout").textContent =
    fleet.rollout ? fleet.rollout.headline : "";
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
"#;

const HOST_SCRIPT: &str = r#"
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
"#;
