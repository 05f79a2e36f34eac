//! The agent's layers, checked on its source: a pass flows observe →
//! desired → apply over a bottom layer, and no module imports from a layer
//! above its own or from a sibling it must not know. Unprivileged, part of
//! `cargo test -p weft-agent`.
//!
//! | layer   | modules                                   | may import          |
//! |---------|-------------------------------------------|---------------------|
//! | bottom  | `base::*`, `metrics`                      | bottom              |
//! | inputs  | `config`, `wire`, `wire_policy`, `wire_cluster_policy` | bottom, inputs      |
//! | observe | `observe::*`                              | + inputs            |
//! | desired | `desired::*`                              | + observe's types   |
//! | apply   | `apply::*`                                | + desired, not observe |
//! | top     | `agent`, `http`, `main`, … (the loop, the commands) | anything  |
//!
//! The allowed arrows form a chain, so the picture has no cycle.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Bottom,
    Inputs,
    Observe,
    Desired,
    Apply,
    Top,
}

/// The layer of a top-level module of the crate (`crate::<name>`).
fn layer_of(module: &str) -> Layer {
    match module {
        "base" | "metrics" => Layer::Bottom,
        "config" | "wire" | "wire_policy" | "wire_cluster_policy" => Layer::Inputs,
        "observe" => Layer::Observe,
        "desired" => Layer::Desired,
        "apply" => Layer::Apply,
        _ => Layer::Top,
    }
}

fn allowed(from: Layer, to: Layer) -> bool {
    use Layer::*;
    match from {
        Top => true,
        Bottom => to == Bottom,
        Inputs => matches!(to, Bottom | Inputs),
        Observe => matches!(to, Bottom | Inputs | Observe),
        Desired => matches!(to, Bottom | Inputs | Observe | Desired),
        Apply => matches!(to, Bottom | Inputs | Desired | Apply),
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's code names through `crate::…` (and
/// `super::…` from a module directly under the crate root), leaving out
/// its unit tests, which may build fixtures from anywhere.
fn imports(code: &str, super_is_root: bool) -> Vec<(usize, String)> {
    let code = code.split("#[cfg(test)]\nmod tests").next().unwrap_or(code);
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or_default();
        let mut prefixes = vec!["crate::"];
        if super_is_root {
            prefixes.push("super::");
        }
        for prefix in prefixes {
            for (at, _) in line.match_indices(prefix) {
                let rest = &line[at + prefix.len()..];
                // `crate::{a, b::c}` names several.
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group.split(['}', ',']).map(str::trim).collect(),
                    None => vec![rest],
                };
                for name in names {
                    let module: String = name.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !module.is_empty() && module != "self" {
                        out.push((n + 1, module));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn no_module_imports_from_a_layer_it_must_not_know() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found the sources in {}", src.display());
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path").as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs");
        let from = layer_of(module);
        // In `x/mod.rs` and in `x.rs`, `super` is the crate root.
        let super_is_root = relative.components().count() == 1 || relative.ends_with("mod.rs");
        let code = std::fs::read_to_string(file).expect("read a source file");
        for (line, target) in imports(&code, super_is_root) {
            let to = layer_of(&target);
            if !allowed(from, to) {
                wrong.push(format!(
                    "src/{}:{line}: {module} ({from:?} layer) imports crate::{target} ({to:?} layer)",
                    relative.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers (see tests/layers.rs for who may import whom):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_relative_imports() {
    let code = "use crate::{apply::x, desired};\nuse super::observe::y; // crate::agent in a comment\n\
                #[cfg(test)]\nmod tests {\n use crate::agent;\n}\n";
    let found: Vec<String> = imports(code, true).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["apply", "desired", "observe"]);
    assert!(!allowed(Layer::Observe, Layer::Apply) && !allowed(Layer::Apply, Layer::Observe));
    assert!(!allowed(Layer::Bottom, Layer::Inputs) && !allowed(Layer::Inputs, Layer::Desired));
}
