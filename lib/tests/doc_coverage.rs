//! Keeps the library's documentation complete (issue 15, "Docs"): every
//! module and every public item of `lib/src` has an example that compiles
//! (a fenced Rust block, so a doctest: neither `ignore` nor `text`), every
//! public function returning a `Result` has an `# Errors` section, and
//! every one returning an `Option` says when it is `None`.
//!
//! `cargo test -p fdholder --doc` (and `--features tokio --doc`) then
//! compiles those examples and runs those that do not need a daemon;
//! `clippy::missing_errors_doc` checks the `# Errors` sections too, this
//! test also covers the `Option`s and the examples, which no stable lint
//! does.
//!
//! The check reads the source text, line by line, as this crate is written
//! (rustfmt's layout): an item is a line starting with `pub` (not
//! `pub(crate)`) followed by `fn`, `struct`, `enum`, `type`, `const`,
//! `static` or `trait`; its documentation is the `///` lines above it, past
//! its attributes. `mod tests` at the end of a file is not looked at.

use std::fs;
use std::path::Path;

/// One public item and what its documentation lacks.
#[derive(Debug, PartialEq, Eq)]
struct Missing {
    at: String,
    item: String,
    lacks: &'static str,
}

/// The kinds of items a `pub` line may declare, after `async`/`const`/
/// `unsafe` qualifiers for functions.
const KINDS: [&str; 7] = ["fn", "struct", "enum", "type", "const", "static", "trait"];

/// Whether a doc block holds a fenced example rustdoc compiles.
fn has_example(doc: &[&str]) -> bool {
    let mut in_block = false;
    for l in doc {
        let Some(info) = l.trim().strip_prefix("```") else {
            continue;
        };
        if in_block {
            // A closing fence.
            in_block = false;
            continue;
        }
        in_block = true;
        // An opening fence whose attributes all keep it a compiled Rust
        // doctest.
        if info
            .split(',')
            .map(str::trim)
            .all(|a| matches!(a, "" | "rust" | "no_run" | "should_panic"))
        {
            return true;
        }
    }
    false
}

/// The text of a doc line, without its `///` or `//!`.
fn doc_text(line: &str) -> Option<&str> {
    let t = line.trim_start();
    t.strip_prefix("///")
        .or_else(|| t.strip_prefix("//!"))
        .filter(|_| !t.starts_with("////"))
}

/// The item a line declares, if it is a public one: (kind, name).
fn public_item(line: &str) -> Option<(&str, String)> {
    let mut words = line.trim_start().strip_prefix("pub ")?.split_whitespace();
    let mut kind = words.next()?;
    while matches!(kind, "async" | "unsafe" | "extern")
        || (kind == "const" && line.contains(" fn "))
    {
        kind = words.next()?;
    }
    if !KINDS.contains(&kind) {
        return None;
    }
    let name: String = words
        .next()?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    Some((kind, name))
}

/// Checks one source file; `file` names it in the report.
fn check_source(file: &str, src: &str) -> Vec<Missing> {
    let lines: Vec<&str> = src.lines().collect();
    let mut missing = Vec::new();
    // The module's doc: the `//!` lines at the top (blank lines between
    // them do not end it).
    let module_doc: Vec<&str> = lines
        .iter()
        .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with("//!"))
        .filter_map(|l| doc_text(l))
        .collect();
    if !has_example(&module_doc) {
        missing.push(Missing {
            at: format!("{file}:1"),
            item: "module".into(),
            lacks: "an example",
        });
    }
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests"))
        .unwrap_or(lines.len());
    for (i, line) in lines[..end].iter().enumerate() {
        let Some((kind, name)) = public_item(line) else {
            continue;
        };
        // The doc block: `///` lines above, past attributes (one a line).
        let mut doc = Vec::new();
        let mut j = i;
        while j > 0 {
            let above = lines[j - 1].trim_start();
            if let Some(t) = doc_text(above) {
                doc.push(t);
            } else if !above.starts_with("#[") {
                break;
            }
            j -= 1;
        }
        doc.reverse();
        let at = format!("{file}:{}", i + 1);
        let mut lack = |lacks| {
            missing.push(Missing {
                at: at.clone(),
                item: format!("{kind} {name}"),
                lacks,
            })
        };
        if !has_example(&doc) {
            lack("an example");
        }
        if kind != "fn" {
            continue;
        }
        // The signature: up to the body's `{` (or a `;`).
        let mut sig = String::new();
        for l in &lines[i..end] {
            sig.push_str(l.trim());
            sig.push(' ');
            if l.contains('{') || l.trim_end().ends_with(';') {
                break;
            }
        }
        let ret = sig.split_once(") ->").map(|(_, r)| r.trim()).unwrap_or("");
        let returns = |t: &str| {
            ret.starts_with(&format!("{t}<"))
                || ret.starts_with(&format!("io::{t}<"))
                || ret.starts_with(&format!("std::io::{t}<"))
        };
        if returns("Result") && !doc.iter().any(|l| l.trim() == "# Errors") {
            lack("an `# Errors` section");
        }
        if returns("Option") && !doc.iter().any(|l| l.contains("`None`")) {
            lack("a sentence on when it is `None`");
        }
    }
    missing
}

#[test]
fn every_public_item_has_an_example_and_its_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "lib/src/*.rs not found in {dir:?}");
    let mut missing = Vec::new();
    let mut items = 0;
    for f in &files {
        let src = fs::read_to_string(f).unwrap();
        let name = format!("lib/src/{}", f.file_name().unwrap().to_string_lossy());
        items += src.lines().filter(|l| public_item(l).is_some()).count();
        missing.extend(check_source(&name, &src));
    }
    // Guard against a checker that silently finds nothing to check.
    assert!(items > 50, "only {items} public items found");
    let report: Vec<String> = missing
        .iter()
        .map(|m| format!("{}: {} lacks {}", m.at, m.item, m.lacks))
        .collect();
    assert!(
        report.is_empty(),
        "{} undocumented:\n{}",
        report.len(),
        report.join("\n")
    );
}

/// The checker itself: it reports what it must, and only that.
#[test]
fn the_check_reports_what_is_missing() {
    let src = r#"//! A module without an example.

/// Documented, with an example.
///
/// # Errors
///
/// Never, really.
///
/// # Example
///
/// ```no_run
/// f().unwrap();
/// ```
pub fn f() -> io::Result<()> {
    Ok(())
}

/// No example, no errors.
#[inline]
pub fn g(
    x: u8,
) -> Result<(), Error> {
    Ok(())
}

/// An example that is not compiled.
///
/// ```text
/// h()
/// ```
pub const fn h() -> Option<u8> {
    None
}

/// An ignored example, for an async one.
///
/// ```ignore
/// ```
pub async fn i() {}

/// Fine: an example, and when it is `None`.
///
/// ```
/// ```
pub fn j() -> Option<u8> {
    None
}

pub(crate) fn not_public() -> io::Result<()> {}

/// A struct with an example.
///
/// ```
/// ```
#[derive(Debug)]
pub struct S {
    /// Fields are not items.
    pub x: u8,
}

pub enum E {}

#[cfg(test)]
mod tests {
    pub fn in_tests() {}
}
"#;
    let got: Vec<(String, &str)> = check_source("x.rs", src)
        .into_iter()
        .map(|m| (format!("{} {}", m.at, m.item), m.lacks))
        .collect();
    let want: Vec<(String, &str)> = vec![
        ("x.rs:1 module".into(), "an example"),
        ("x.rs:20 fn g".into(), "an example"),
        ("x.rs:20 fn g".into(), "an `# Errors` section"),
        ("x.rs:31 fn h".into(), "an example"),
        ("x.rs:31 fn h".into(), "a sentence on when it is `None`"),
        ("x.rs:39 fn i".into(), "an example"),
        ("x.rs:61 enum E".into(), "an example"),
    ];
    assert_eq!(got, want);
}
