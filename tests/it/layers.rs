//! The layers of docs/architecture.md, held: each folder of `src/` imports only from the
//! layers below it, and the policy touches no I/O.

use std::path::Path;

/// Each layer, lowest first, with what it may import from the crate.
const LAYERS: &[(&str, &[&str])] = &[
    ("policy", &[]),
    ("text", &[]),
    ("audit", &["policy", "text"]),
    ("upstream", &["text"]),
    ("secrets", &["upstream", "text"]),
    ("control", &["policy", "audit", "upstream", "secrets", "text"]),
    ("serve", &["policy", "audit", "upstream", "secrets", "control", "text"]),
];

/// What the pure policy must not use.
const IO: &[&str] =
    &["tokio", "hyper", "std::fs", "std::net::Tcp", "std::time::Instant", "SystemTime", "std::env"];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn each_layer_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (layer, allowed) in LAYERS {
        let mut files = Vec::new();
        let dir = src.join(layer);
        if dir.is_dir() {
            sources(&dir, &mut files);
        } else {
            files.push(src.join(format!("{layer}.rs")));
        }
        assert!(!files.is_empty(), "no sources for {layer}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                for used in line.split("crate::").skip(1) {
                    let module: String =
                        used.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if module != *layer && !allowed.contains(&module.as_str()) {
                        wrong.push(format!("{}:{}: {layer} imports crate::{module}", file.display(), n + 1));
                    }
                }
                if *layer == "policy" && !line.trim_start().starts_with("//") {
                    for io in IO {
                        if line.contains(io) {
                            wrong.push(format!("{}:{}: the policy uses {io}", file.display(), n + 1));
                        }
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// A module's path from its file: `src/serve/meter/mod.rs` → `serve::meter`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// No import circles inside a folder: within each folder, its children (files and subfolders,
/// each counted with everything under it) import one another without a cycle. Test code
/// (after `#[cfg(test)]`) may reach anywhere.
#[test]
fn no_folder_has_an_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: Vec<Vec<String>> = files.iter().map(|f| module_of(&src, f)).collect();
    // The longest module a path names (`crate::a::b::Item` → `a::b`).
    let known = |parts: &[String]| -> Option<Vec<String>> {
        (1..=parts.len()).rev().map(|k| parts[..k].to_vec()).find(|p| modules.contains(p))
    };
    // Each module's imports of the crate's modules (`crate::a::b`, `super::c`).
    let mut edges: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for (file, module) in files.iter().zip(&modules) {
        let text = std::fs::read_to_string(file).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap();
        let parent = &module[..module.len().saturating_sub(1)];
        for (marker, base) in [("crate::", &[][..]), ("super::", parent)] {
            for used in text.split(marker).skip(1) {
                let path: Vec<String> = used
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                    .next()
                    .unwrap_or("")
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                let full: Vec<String> = base.iter().cloned().chain(path).collect();
                if let Some(to) = known(&full)
                    && to != *module
                {
                    edges.push((module.clone(), to));
                }
            }
        }
    }
    let mut folders: Vec<Vec<String>> =
        modules.iter().map(|m| m[..m.len().saturating_sub(1)].to_vec()).collect();
    folders.sort();
    folders.dedup();
    let mut circles = Vec::new();
    for folder in &folders {
        let n = folder.len();
        let child = |m: &Vec<String>| (m.len() > n && m[..n] == folder[..]).then(|| m[n].clone());
        let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
            Default::default();
        for (from, to) in &edges {
            if let (Some(a), Some(b)) = (child(from), child(to))
                && a != b
            {
                graph.entry(a).or_default().insert(b);
            }
        }
        // A child that reaches itself again is on a circle.
        for start in graph.keys() {
            let (mut seen, mut todo) = (std::collections::BTreeSet::new(), vec![start.clone()]);
            while let Some(at) = todo.pop() {
                for next in graph.get(&at).into_iter().flatten() {
                    if next == start {
                        circles.push(format!("{}: {start} imports itself again", folder.join("::")));
                    } else if seen.insert(next.clone()) {
                        todo.push(next.clone());
                    }
                }
            }
        }
    }
    circles.dedup();
    assert!(circles.is_empty(), "\n{}", circles.join("\n"));
}
