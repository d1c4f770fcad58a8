//! The layers of docs/architecture.md, held: each folder of `src/` imports only from the
//! layers below it, and the policy touches no I/O.

use std::path::Path;

/// Each layer, lowest first, with what it may import from the crate.
const LAYERS: &[(&str, &[&str])] = &[
    ("policy", &[]),
    ("text", &[]),
    ("audit", &["policy"]),
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
