//! The module table of `docs/architecture.md` is the layering rule, and this test holds the
//! code to it: every `crate::` path in a file under `src/` must name the file's own module or
//! a module its row allows under "may import". A forbidden import fails the test with the
//! file, the line and the path. Modules without a row fail too, so a new module gets one.
//! (harmonia checks its layer rules in CI the same way.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a row of the table allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MayImport {
    Everything,
    /// Module paths (`nix`, `sftp::client`); each allows itself and everything under it.
    Only(Vec<Vec<String>>),
}

/// The module table: module path → what it may import.
fn read_table(doc: &str) -> BTreeMap<Vec<String>, MayImport> {
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in doc.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() == 3 && cells[0] == "module" && cells[2] == "may import" {
            in_table = true;
            continue;
        }
        if !in_table || cells.len() != 3 || cells[0].starts_with("---") {
            if in_table && !line.trim().starts_with('|') {
                break;
            }
            continue;
        }
        let module = segments(
            backticked(cells[0])
                .first()
                .expect("a module name in backticks"),
        );
        let allowed = match cells[2] {
            "everything" => MayImport::Everything,
            text => MayImport::Only(backticked(text).iter().map(|m| segments(m)).collect()),
        };
        rows.insert(module, allowed);
    }
    rows
}

/// The `code spans` of a table cell, notes in parentheses left out.
fn backticked(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut code: Option<String> = None;
    for c in cell.chars() {
        match (c, &mut code) {
            ('`', Some(text)) => {
                if depth == 0 {
                    out.push(std::mem::take(text));
                }
                code = None;
            }
            ('`', None) => code = Some(String::new()),
            (c, Some(text)) => text.push(c),
            ('(', None) => depth += 1,
            (')', None) => depth -= 1,
            _ => {}
        }
    }
    out
}

fn segments(path: &str) -> Vec<String> {
    path.split("::").map(str::to_owned).collect()
}

/// `src/a/b/mod.rs` → `a::b`, `src/a/b.rs` → `a::b`, `src/a.rs` → `a`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_owned());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every `crate::` path in `text` (comments left out) with its line number; a group
/// `crate::{a::b, c}` gives one path per item.
fn crate_paths(text: &str) -> Vec<(usize, Vec<String>)> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        let offset = code.len() - rest.len() + at;
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| ident(c) || c == ':') {
            continue; // `$crate::`, `bento_crate::` and the like
        }
        let line = code[..offset].matches('\n').count() + 1;
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let path: String = item
                    .trim()
                    .chars()
                    .take_while(|&c| ident(c) || c == ':')
                    .collect();
                if !path.is_empty() {
                    found.push((line, segments(path.trim_end_matches(':'))));
                }
            }
            continue;
        }
        let path: String = rest.chars().take_while(|&c| ident(c) || c == ':').collect();
        let path: Vec<String> = path
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if !path.is_empty() {
            found.push((line, path));
        }
    }
    found
}

/// The violations in the tree under `src`, one line each.
fn violations(src: &Path, table: &BTreeMap<Vec<String>, MayImport>) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        if module == ["lib"] || module == ["main"] {
            continue; // the crate root and the binary may import everything
        }
        // The most specific row: the longest module path the file's module starts with.
        let Some((row, allowed)) = table
            .iter()
            .filter(|(m, _)| module.starts_with(m))
            .max_by_key(|(m, _)| m.len())
        else {
            out.push(format!(
                "{}: module `{}` has no row in docs/architecture.md",
                file.display(),
                module[0]
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, path) in crate_paths(&text) {
            let ok = path.starts_with(row)
                || match allowed {
                    MayImport::Everything => true,
                    MayImport::Only(list) => list.iter().any(|m| path.starts_with(m)),
                };
            if !ok {
                out.push(format!(
                    "{}:{line}: `crate::{}` is not allowed in `{}` (may import: {})",
                    file.display(),
                    path.join("::"),
                    row.join("::"),
                    match allowed {
                        MayImport::Everything => "everything".to_owned(),
                        MayImport::Only(l) if l.is_empty() => "nothing of ours".to_owned(),
                        MayImport::Only(l) => l
                            .iter()
                            .map(|m| m.join("::"))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                ));
            }
        }
    }
    out
}

#[test]
fn every_crate_path_in_src_is_allowed_by_the_module_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let table = read_table(&doc);
    // The table was found and read: the rows every layer needs are there.
    for module in ["nix", "durable", "clock", "sftp::client", "server", "cli"] {
        assert!(
            table.contains_key(&segments(module)),
            "no row for {module}: {table:?}"
        );
    }
    assert_eq!(table[&segments("cli")], MayImport::Everything);
    assert_eq!(table[&segments("nix")], MayImport::Only(vec![]));
    let found = violations(&root.join("src"), &table);
    assert!(
        found.is_empty(),
        "imports that docs/architecture.md does not allow:\n{}",
        found.join("\n")
    );
}

/// The checker itself, on a small tree: it must see a forbidden import (in a `use`, in a
/// group, in an expression), ignore comments, and let a module use itself.
#[test]
fn the_checker_finds_forbidden_imports() {
    let doc = "\
| module | job | may import |
|---|---|---|
| `nix` | pure | nothing of ours |
| `sftp` | both sides | nothing of ours |
| `sftp::client` | client | `report` (names) |
| `report` | reports | `nix` |
";
    let table = read_table(doc);
    assert_eq!(table.len(), 4, "{table:?}");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("sftp")).unwrap();
    std::fs::create_dir_all(src.join("nix")).unwrap();
    let write = |rel: &str, text: &str| std::fs::write(src.join(rel), text).unwrap();
    write(
        "nix/mod.rs",
        "use crate::nix::store;\n// crate::report is only a comment\n",
    );
    write(
        "report.rs",
        "use crate::nix::keys;\nuse crate::{nix::hash, sftp::client};\n",
    );
    write(
        "sftp/client.rs",
        "use crate::report::x;\nfn f() { crate::sftp::server::serve(); }\n",
    );
    write("sftp/mod.rs", "pub mod client;\n");
    let found = violations(src, &table);
    let want = [
        format!(
            "{}:2: `crate::sftp::client` is not allowed in `report` (may import: nix)",
            src.join("report.rs").display()
        ),
        format!(
            "{}:2: `crate::sftp::server::serve` is not allowed in `sftp::client` (may import: report)",
            src.join("sftp/client.rs").display()
        ),
    ];
    assert_eq!(found, want);
    write("status.rs", "use crate::nix::store;\n");
    let unlisted = violations(src, &table);
    assert!(
        unlisted
            .iter()
            .any(|v| v.contains("module `status` has no row")),
        "{unlisted:?}"
    );
}
