//! The module graph of `src/` is a DAG: no top-level module reaches back to one that
//! depends on it. Read from the `crate::` paths of each file (tests excluded), so a new
//! cycle fails here, naming the files that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module → the modules it names, with the files that name each.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut graph: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let names = graph.entry(module.clone()).or_default();
            for line in code.lines() {
                let line = line.split("//").next().unwrap();
                for (at, _) in line.match_indices("crate::") {
                    let named: String = line[at + 7..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !named.is_empty() && named != module {
                        names
                            .entry(named)
                            .or_default()
                            .insert(relative.display().to_string());
                    }
                }
            }
        }
    }
    graph
}

/// A path from `from` to `to`, if any.
fn reaches(
    graph: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in graph.get(from).into_iter().flat_map(|n| n.keys()) {
        if next == to {
            return Some(vec![next.clone()]);
        }
        if seen.insert(next.clone()) {
            if let Some(mut rest) = reaches(graph, next, to, seen) {
                rest.insert(0, next.clone());
                return Some(rest);
            }
        }
    }
    None
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 10, "the scan found the modules: {graph:?}");
    let mut cycles = Vec::new();
    for (module, names) in &graph {
        for (named, files) in names {
            if let Some(back) = reaches(&graph, named, module, &mut BTreeSet::new()) {
                cycles.push(format!(
                    "{module} -> {named} -> {} (the first step in {files:?})",
                    back.join(" -> ")
                ));
            }
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}
