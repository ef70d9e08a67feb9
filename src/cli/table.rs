//! Plain-text tables for summaries: aligned columns; the last column may span several
//! lines, continued under itself.
//!
//! Hand-written, not `comfy-table` or `tabled`: one layout in fifty lines, without the
//! borders, styles and terminal-width probing those crates are made of.

/// Renders `rows` under `headers`, columns separated by two spaces.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns.saturating_sub(1)) {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let indent: usize = widths
        .iter()
        .take(columns.saturating_sub(1))
        .map(|w| w + 2)
        .sum();
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                let mut parts = cell.lines();
                text.push_str(parts.next().unwrap_or_default());
                for more in parts {
                    text.push('\n');
                    text.push_str(&" ".repeat(indent));
                    text.push_str(more);
                }
            } else {
                let pad = widths.get(i).copied().unwrap_or(0);
                text.push_str(&format!("{cell:<pad$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `1.2s`, or `850ms` below one second.
pub fn duration(d: std::time::Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_and_continues_the_last_column() {
        let rows = vec![
            vec![
                "web1".to_owned(),
                "built".to_owned(),
                "/nix/store/x".to_owned(),
            ],
            vec![
                "db".to_owned(),
                "failed (build)".to_owned(),
                "error: one\n  two".to_owned(),
            ],
        ];
        let want = "HOST  STATUS          RESULT\nweb1  built           /nix/store/x\ndb    failed (build)  error: one\n                        two\n";
        assert_eq!(render(&["HOST", "STATUS", "RESULT"], &rows), want);
        assert_eq!(duration(std::time::Duration::from_millis(850)), "850ms");
        assert_eq!(duration(std::time::Duration::from_millis(1250)), "1.2s");
    }
}
