//! Live progress of a fleet build: a spinner per running host (indicatif) when stderr is a
//! terminal, plain log lines otherwise. Builds report [`Event`]s; this turns them into
//! output.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::table;
use crate::build::{BuildPhase, Event, HostResult, Reporter, Status};

/// A reporter for `total` hosts, drawing on stderr.
pub fn reporter(total: usize) -> Reporter {
    if std::io::stderr().is_terminal() {
        bars(total)
    } else {
        Arc::new(plain)
    }
}

fn phase_word(phase: BuildPhase) -> &'static str {
    match phase {
        BuildPhase::Evaluate => "evaluating",
        BuildPhase::Build => "building",
        BuildPhase::Record => "recording",
    }
}

/// One line saying how a host ended.
pub fn finished_line(r: &HostResult) -> String {
    let time = table::duration(r.duration());
    match &r.status {
        Status::Built { store_path, .. } => format!("{}: built {store_path} ({time})", r.host),
        Status::Evaluated { drv_path } => format!("{}: evaluated {drv_path} ({time})", r.host),
        Status::Failed { phase, error, .. } => {
            let first = error.lines().next().unwrap_or_default();
            format!("{}: {phase} failed ({time}): {first}", r.host)
        }
    }
}

fn plain(event: Event) {
    match event {
        Event::Phase { host, phase } => eprintln!("{host}: {}", phase_word(phase)),
        Event::Line { host, line } => tracing::debug!(host = %host, "{line}"),
        Event::Finished(r) => eprintln!("{}", finished_line(&r)),
    }
}

fn bars(total: usize) -> Reporter {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi.add(ProgressBar::new(total as u64));
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} hosts done, {elapsed}") {
        overall.set_style(style);
    }
    overall.enable_steady_tick(Duration::from_millis(500));
    let spinner_style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let running: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    Arc::new(move |event| {
        let Ok(mut running) = running.lock() else {
            return;
        };
        match event {
            Event::Phase { host, phase } => {
                let bar = running.entry(host.clone()).or_insert_with(|| {
                    let bar = multi.insert_before(&overall, ProgressBar::new_spinner());
                    bar.set_style(spinner_style.clone());
                    bar.set_prefix(host);
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar
                });
                bar.set_message(phase_word(phase));
            }
            Event::Line { host, line } => {
                if let Some(bar) = running.get(&host) {
                    bar.set_message(line);
                }
            }
            Event::Finished(r) => {
                if let Some(bar) = running.remove(&r.host) {
                    bar.finish_and_clear();
                }
                let mark = if r.ok() { "ok  " } else { "FAIL" };
                let _ = multi.println(format!("{mark} {}", finished_line(&r)));
                overall.inc(1);
                if overall.position() >= overall.length().unwrap_or(0) {
                    overall.finish_and_clear();
                }
            }
        }
    })
}
