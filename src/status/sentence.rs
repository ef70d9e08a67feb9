//! A report's reason told in one sentence, for `bento status` and the dashboard: what went
//! wrong, not the command line that found it (which stays in the report's log).
//!
//! A reason whose first line quotes a failed command (`` copying P from C failed: `nix ...`
//! exited with status 1: `` and Nix's messages below) becomes the words before the command
//! followed by the first `error:` line of the command's output: "copying P from C failed:
//! path 'P' is required, but there is no substituter that can build it". Without such a
//! line, the program's name and what happened to it stand in for the command. Any other
//! reason is shown by its first line.
//!
//! Pure. May import nothing of ours.

/// Longest sentence shown; longer ones are cut with an ellipsis.
const MAX_CHARS: usize = 300;

/// `reason` in one line.
pub fn one_sentence(reason: &str) -> String {
    let mut lines = reason.lines();
    let first = lines.next().unwrap_or_default().trim_end();
    let sentence = match split_command(first) {
        Some((before, command, after)) => {
            let error = lines
                .map(strip_colours)
                .find_map(|l| l.trim_start().strip_prefix("error: ").map(str::to_owned));
            let what = match error {
                Some(e) => e.trim().to_owned(),
                None => {
                    let program = command.split_whitespace().next().unwrap_or("a command");
                    let program = program.rsplit('/').next().unwrap_or(program);
                    format!("{program}{}", after.trim_end_matches(':'))
                }
            };
            format!("{before}{what}")
        }
        None => first.to_owned(),
    };
    cut(sentence)
}

/// `before`, the command and `after` of a line quoting one command in backquotes.
fn split_command(line: &str) -> Option<(&str, &str, &str)> {
    let (before, rest) = line.split_once('`')?;
    let (command, after) = rest.rsplit_once('`')?;
    Some((before, command, after))
}

fn strip_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn cut(sentence: String) -> String {
    if sentence.chars().count() <= MAX_CHARS {
        return sentence;
    }
    let mut short: String = sentence.chars().take(MAX_CHARS - 1).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_give_way_to_what_went_wrong() {
        let p = "/nix/store/6ns18gbbwq7rvmx72llk25xk01agd38f-nixos-system-web1";
        let copy = format!(
            "copying {p} from http://10.0.0.1:5000 failed: `nix --extra-experimental-features nix-command flakes copy --from http://10.0.0.1:5000 --to local {p}` exited with status 1"
        );
        let cases: Vec<(&str, String, String)> = vec![
            (
                "Nix's error line replaces the command",
                format!(
                    "{copy}:\nwarning: ignoring the client-specified setting\nerror: path '{p}' is required, but there is no substituter that can build it\nerror: some paths failed"
                ),
                format!(
                    "copying {p} from http://10.0.0.1:5000 failed: path '{p}' is required, but there is no substituter that can build it"
                ),
            ),
            (
                "colours are removed",
                format!(
                    "{copy}:\n\u{1b}[31;1merror:\u{1b}[0m bad archive: input doesn't look like a Nix archive"
                ),
                format!(
                    "copying {p} from http://10.0.0.1:5000 failed: bad archive: input doesn't look like a Nix archive"
                ),
            ),
            (
                "no error line: the program and what happened",
                copy.clone(),
                format!("copying {p} from http://10.0.0.1:5000 failed: nix exited with status 1"),
            ),
            (
                "a timeout",
                format!(
                    "activating {p} failed: `{p}/bin/switch-to-configuration switch` timed out after 600s and was killed"
                ),
                format!(
                    "activating {p} failed: switch-to-configuration timed out after 600s and was killed"
                ),
            ),
            (
                "no command: the first line",
                "health check failed: port 80 closed\nsecond line".to_owned(),
                "health check failed: port 80 closed".to_owned(),
            ),
            ("empty", String::new(), String::new()),
        ];
        for (what, reason, want) in cases {
            assert_eq!(one_sentence(&reason), want, "{what}");
        }
    }

    #[test]
    fn long_sentences_are_cut() {
        let long = "x".repeat(1000);
        let short = one_sentence(&long);
        assert_eq!(short.chars().count(), MAX_CHARS);
        assert!(short.ends_with('…'));
    }
}
