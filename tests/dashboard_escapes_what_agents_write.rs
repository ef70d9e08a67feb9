//! What an agent writes (its running system, a failure's reason, its log) reaches the
//! dashboard of `bento serve` as text, never as markup: a report carrying
//! `<script>alert(1)</script>` with `"`, `'` and `&` is shown escaped everywhere it is shown
//! (the fleet table and the host's page), judged twice: in the HTML as served, and in the DOM
//! headless Chromium builds from it (the only `<script>` is the page's own, and the text is
//! exactly what the agent wrote). A host name cannot carry markup at all: the fleet file
//! refuses it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use bento::report::{Outcome, Report};
use harness::browser::dom;
use harness::http::curl;
use harness::init::Scaffold;
use harness::keys::ssh_keygen_of;
use harness::ran::{Ran, bento};

const POISON: &str = "<script>alert(1)</script> \"dq\" 'sq' & amp";
/// POISON as an HTML serializer writes it in text: `&`, `<` and `>` as entities.
const AS_TEXT: &str = "&lt;script&gt;alert(1)&lt;/script&gt; \"dq\" 'sq' &amp; amp";

fn write_poisoned_report(repo: &Scaffold) {
    let reports = repo.state.join("publish/web1/reports");
    std::fs::create_dir_all(&reports).unwrap();
    let now = bento::clock::unix_now();
    let report = Report {
        format: bento::report::FORMAT,
        host: "web1".into(),
        generation: 1,
        wanted: Some(POISON.into()),
        running: Some(POISON.into()),
        outcome: Outcome::ActivationFailed,
        reason: Some(POISON.into()),
        started_ms: (now - 20) * 1000,
        finished_ms: (now - 10) * 1000,
        timings: Default::default(),
        log: format!("copying closure\n{POISON}\nactivation failed\n"),
    };
    std::fs::write(reports.join(report.file_name()), report.to_bytes()).unwrap();
}

/// The HTML as served, with `'` in whichever form the template engine writes it.
fn served_html(url: &str) -> String {
    curl(url).replace("&#39;", "'").replace("&#x27;", "'")
}

#[test]
fn agent_text_is_escaped_on_every_page_that_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = ssh_keygen_of(dir.path(), "web1", "ed25519", None);
    let repo = Scaffold::init(dir.path(), "web1", &key);
    write_poisoned_report(&repo);
    let server = repo.serve(dir.path(), true).unwrap();
    let base = server.dashboard.clone().unwrap();

    // (page, places it shows the agent's text: running and last error in the table; running,
    // last error, the report's reason and its log on the host's page)
    for (page, shown) in [("/", 2), ("/hosts/web1", 4)] {
        let url = format!("{base}{page}");
        let html = served_html(&url);
        assert!(!html.contains("<script>alert"), "{page} as served:\n{html}");
        assert_eq!(html.matches("<script").count(), 1, "{page}:\n{html}");
        let escaped = AS_TEXT.replace('"', "&quot;");
        assert_eq!(
            html.matches(escaped.as_str()).count(),
            shown,
            "{page} as served shows {escaped:?} {shown} times:\n{html}"
        );

        let dom = dom(&url);
        assert_eq!(
            dom.matches("<script").count(),
            1,
            "{page} in Chromium:\n{dom}"
        );
        assert_eq!(
            dom.matches(AS_TEXT).count(),
            shown,
            "{page} in Chromium shows {AS_TEXT:?} {shown} times:\n{dom}"
        );
    }
    // Positive control: the fleet table's script ran (it redraws every row from the JSON API,
    // with textContent), so the table judged above is the one a browser keeps showing.
    assert!(dom(&format!("{base}/")).contains("updated "));

    // A host name with markup never reaches a page: the fleet file refuses it.
    let toml = std::fs::read_to_string(&repo.file)
        .unwrap()
        .replace("[hosts.web1]", "[hosts.\"<script>alert(1)</script>\"]");
    std::fs::write(&repo.file, toml).unwrap();
    let out = Ran::of(bento().args(["status", "--config"]).arg(&repo.file));
    assert!(!out.success(), "{}", out.both());
    assert!(
        out.both().contains("host \"<script>alert(1)</script>\"")
            || out
                .both()
                .contains("host <script>alert(1)</script>, field name"),
        "{}",
        out.both()
    );
}
