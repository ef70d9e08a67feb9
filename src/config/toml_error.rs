//! Turns a TOML or schema error into a message that names the host and the field: the
//! `toml` crate reports "duplicate key" or "unknown field" with a byte span; this module
//! finds the table header and key around that span (pure text inspection, no parsing of
//! values) so the message can say "host web1, field sshkey".

/// Where in `bento.toml` an error is, and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line number.
    pub line: usize,
    /// "host web1, field tags", "[fleet] field flake", or "" when unknown.
    pub subject: String,
    /// The error, reworded when it is a duplicate.
    pub message: String,
}

/// Describes a `toml` error at byte `span_start` of `source`.
pub fn locate(source: &str, span_start: Option<usize>, message: &str) -> Located {
    let message = message.trim().to_owned();
    let Some(start) = span_start.filter(|s| *s <= source.len()) else {
        return Located {
            line: 0,
            subject: String::new(),
            message,
        };
    };
    let before = source.get(..start).unwrap_or_default();
    let line_no = before.matches('\n').count() + 1;
    let lines: Vec<&str> = source.lines().collect();
    let line_idx = line_no - 1;
    let this_line = lines.get(line_idx).copied().unwrap_or_default().trim();
    let is_header = this_line.starts_with('[');
    let mut path = if is_header {
        header_segments(this_line)
    } else {
        // The innermost table header above the error line.
        let table = lines
            .iter()
            .take(line_idx)
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with('['))
            .map(header_segments)
            .unwrap_or_default();
        let key = this_line
            .split_once('=')
            .map(|(k, _)| split_dotted(k))
            .unwrap_or_default();
        table.into_iter().chain(key).collect()
    };
    path.retain(|s| !s.is_empty());
    let described = describe(&path);
    // A duplicate's message names its subject itself.
    let (subject, message) = if message == "duplicate key" {
        let twice = match path.as_slice() {
            [hosts, _] if hosts == "hosts" => "is defined twice",
            _ if is_header => "is defined twice",
            _ => "is set twice",
        };
        (String::new(), format!("{described} {twice}"))
    } else {
        (described, message)
    };
    Located {
        line: line_no,
        subject,
        message,
    }
}

fn describe(path: &[String]) -> String {
    match path {
        [] => String::new(),
        [top] if top == "fleet" => "[fleet]".to_owned(),
        [top, field, ..] if top == "fleet" => format!("[fleet] field {field}"),
        [top] if top == "hosts" => "[hosts]".to_owned(),
        [top, host] if top == "hosts" => format!("host {host}"),
        [top, host, field, ..] if top == "hosts" => format!("host {host}, field {field}"),
        [top, ..] => format!("top-level field {top}"),
    }
}

/// `[hosts."web1.example"]` → `["hosts", "web1.example"]`.
fn header_segments(line: &str) -> Vec<String> {
    let inner = line.trim_start_matches('[');
    let inner = match inner.find(']') {
        Some(end) => &inner[..end],
        None => inner,
    };
    split_dotted(inner)
}

/// Splits a dotted key on dots outside quotes and unquotes each part.
fn split_dotted(key: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in key.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '.') => parts.push(std::mem::take(&mut current).trim().to_owned()),
            (_, c) => current.push(c),
        }
    }
    parts.push(current.trim().to_owned());
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(source: &str, needle_occurrence: (&str, usize), message: &str) -> Located {
        let (needle, n) = needle_occurrence;
        let start = source.match_indices(needle).nth(n).map(|(i, _)| i);
        locate(source, start, message)
    }

    #[test]
    fn names_host_and_field() {
        let toml = "[fleet]\nflake = \".\"\nbogus = 1\n\n[hosts.web1]\nssh_key = \"x\"\nsshkey = \"y\"\n\n[hosts.\"db.example\"]\ntags = \"db\"\n[hosts.web1]\n";
        let cases = [
            (
                ("bogus", 0),
                "unknown field `bogus`",
                3,
                "[fleet] field bogus",
                "unknown field `bogus`",
            ),
            (
                ("sshkey", 0),
                "unknown field `sshkey`",
                7,
                "host web1, field sshkey",
                "unknown field `sshkey`",
            ),
            (
                ("\"db\"", 0),
                "invalid type",
                10,
                "host db.example, field tags",
                "invalid type",
            ),
            (
                ("web1", 1),
                "duplicate key",
                11,
                "",
                "host web1 is defined twice",
            ),
        ];
        for ((needle, n), msg, line, subject, message) in cases {
            let got = at(toml, (needle, n), msg);
            assert_eq!(
                got,
                Located {
                    line,
                    subject: subject.into(),
                    message: message.into()
                },
                "{needle}"
            );
        }
    }

    #[test]
    fn duplicates_inside_a_host_and_inline_hosts() {
        let field_twice = "[hosts.web1]\ntags = []\ntags = []\n";
        let got = at(field_twice, ("tags", 1), "duplicate key");
        assert_eq!(got.message, "host web1, field tags is set twice");
        let inline = "[hosts]\nweb1 = {}\nweb1 = {}\n";
        let got = at(inline, ("web1", 1), "duplicate key");
        assert_eq!(
            (got.line, got.message.as_str()),
            (3, "host web1 is defined twice")
        );
        let dotted = "hosts.web1.tags = []\nhosts.web1.tags = []\n";
        let got = at(dotted, ("hosts", 1), "duplicate key");
        assert_eq!(got.message, "host web1, field tags is set twice");
    }

    #[test]
    fn without_a_span_the_message_is_kept() {
        let got = locate("", None, "missing field");
        assert_eq!(
            got,
            Located {
                line: 0,
                subject: String::new(),
                message: "missing field".into()
            }
        );
    }

    #[test]
    fn dotted_keys_respect_quotes() {
        assert_eq!(
            split_dotted("hosts.\"a.b\".tags"),
            vec!["hosts", "a.b", "tags"]
        );
        assert_eq!(
            header_segments("[ hosts . 'x.y' ] # c"),
            vec!["hosts", "x.y"]
        );
    }
}
