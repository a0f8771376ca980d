//! The floors of the house, checked: imports run one way, discover → probe → collect → report →
//! session → trace/serve, with the commands on top. A module imports only from modules on a
//! lower floor; these tests read every source file and fail on an import that runs back up (or
//! sideways, between two modules of one floor), naming the file and the module it reaches for.

use std::{collections::BTreeMap, path::Path};

/// Each top-level module and its floor (1 is the ground).
const FLOORS: [(&str, u8); 16] = [
    ("units", 1),
    ("preflight", 1),
    ("discover", 2),
    ("probe", 3),
    ("collect", 4),
    ("report", 5),
    ("doctor", 5),
    ("session", 6),
    ("cli", 6),
    ("trace", 7),
    ("serve", 7),
    ("capture", 7),
    ("check", 7),
    ("list", 8),
    ("lab", 8),
    // The binary's entry point, above everything.
    ("main", 9),
];

/// The source without comments (`//` to the end of the line; enough for this crate's sources:
/// the only `//` inside string literals here are in URLs, never on an import line).
fn without_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment of each item of a `{…}` group that starts at `text[0]`.
fn group_roots(text: &str) -> Vec<String> {
    let mut depth = 0;
    let mut roots = Vec::new();
    let mut item = String::new();
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    roots.push(std::mem::take(&mut item));
                    break;
                }
            }
            ',' if depth == 1 => {
                roots.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    roots
        .iter()
        .filter_map(|i| {
            let name: String = i
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The crate's top-level modules a source file names (`crate::x`, `crate::{x, y::z}`, and in a
/// top-level file `super::x`).
fn imports(text: &str, top_level: bool) -> Vec<String> {
    let prefixes: &[&str] = if top_level {
        &["crate::", "super::"]
    } else {
        &["crate::"]
    };
    names_after(text, prefixes)
}

/// The source without its `#[cfg(test)] mod … { … }` blocks: tests are not the house.
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else {
            return out;
        };
        let is_mod = after[..open].contains("mod ") && !after[..open].contains(';');
        if !is_mod {
            out.push_str("#[cfg(test)]");
            rest = &after["#[cfg(test)]".len()..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The first segment of every path that follows one of `prefixes` (`p::x`, `p::{x, y::z}`).
fn names_after(text: &str, prefixes: &[&str]) -> Vec<String> {
    let text = without_tests(&without_comments(text));
    let mut found = Vec::new();
    for prefix in prefixes {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let rest = &text[at + prefix.len()..];
            if rest.starts_with('{') {
                found.extend(group_roots(rest));
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
    }
    found
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to and whether it is that
/// module's own file (`src/x.rs`, `src/x/mod.rs`), where `super` is the crate.
fn sources(src: &Path) -> Vec<(std::path::PathBuf, String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let Ok(rel) = path.strip_prefix(src) else {
                continue;
            };
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let top = parts[0].trim_end_matches(".rs").to_string();
            let top_level = parts.len() == 1 || (parts.len() == 2 && parts[1] == "mod.rs");
            out.push((path, top, top_level));
        }
    }
    out
}

#[test]
fn imports_never_run_back_up() {
    let floors: BTreeMap<&str, u8> = FLOORS.into_iter().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&src);
    assert!(files.len() > 20, "read only {} files", files.len());
    let mut wrong = Vec::new();
    for (path, top, top_level) in &files {
        if top == "lib" || top == "layers" {
            continue;
        }
        let Some(&floor) = floors.get(top.as_str()) else {
            wrong.push(format!(
                "{}: module `{top}` has no floor in layers.rs",
                path.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for name in imports(&text, *top_level) {
            let Some(&to) = floors.get(name.as_str()) else {
                continue;
            };
            if name != *top && to >= floor {
                wrong.push(format!(
                    "{}: `{top}` (floor {floor}) imports `{name}` (floor {to})",
                    path.display()
                ));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "imports that run back up:\n{}",
        wrong.join("\n")
    );
}

/// Within one module's folder, which files each file imports (`super::x` or `crate::m::x` where
/// `x` is a sibling file; the folder's `mod.rs` is the module's face and not counted).
fn sibling_imports(src: &Path, module: &str) -> BTreeMap<String, Vec<String>> {
    let dir = src.join(module);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return BTreeMap::new();
    };
    let files: BTreeMap<String, std::path::PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().into_owned(), p)))
        .filter(|(name, _)| name != "mod" && !name.ends_with("tests"))
        .collect();
    let inside = format!("crate::{module}::");
    files
        .iter()
        .map(|(name, path)| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let mut to: Vec<String> = names_after(&text, &["super::", &inside])
                .into_iter()
                .filter(|n| n != name && files.contains_key(n))
                .collect();
            to.sort();
            to.dedup();
            (name.clone(), to)
        })
        .collect()
}

/// A loop of imports among `graph`'s files, if there is one (as the files it passes).
fn a_circle(graph: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        graph: &BTreeMap<String, Vec<String>>,
        at: &str,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == at) {
            let mut circle = path[i..].to_vec();
            circle.push(at.to_string());
            return Some(circle);
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.to_string());
        for next in graph.get(at).into_iter().flatten() {
            if let Some(c) = visit(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(at.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|start| visit(graph, start, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_its_files_in_a_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (module, _) in FLOORS {
        let graph = sibling_imports(&src, module);
        if let Some(circle) = a_circle(&graph) {
            panic!(
                "the files of {module}/ import each other in a circle: {}",
                circle.join(" -> ")
            );
        }
    }
}

#[test]
fn a_circle_is_found() {
    let graph: BTreeMap<String, Vec<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        a_circle(&graph),
        Some(["a", "b", "c", "a"].map(String::from).to_vec())
    );
    let mut line = graph.clone();
    line.insert("c".into(), vec![]);
    assert_eq!(a_circle(&line), None);
}

#[test]
fn the_reader_finds_what_runs_back_up() {
    let text = "use crate::{\n    discover::Workload, // crate::serve\n    session::{self, Stop},\n};\nfn f() { crate::trace::humantime(); supercrate::x; }";
    assert_eq!(
        imports(text, false),
        ["discover", "session", "trace"].map(String::from)
    );
    assert_eq!(
        imports("use super::{probe, report::Output};", true),
        ["probe", "report"].map(String::from)
    );
    assert!(imports("use super::netlink;", false).is_empty());
    let with_tests = "use crate::probe;\n#[cfg(test)]\nmod tests {\n    use crate::serve::{x, y};\n}\nfn f() { crate::collect::g(); }";
    assert_eq!(
        imports(with_tests, false),
        ["probe", "collect"].map(String::from)
    );
}
