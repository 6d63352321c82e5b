//! The layer map in `src/lib.rs` is true: every module imports only modules
//! below it. Read from the source, so a new `use crate::…` that points up
//! (or sideways, making a circle possible) fails here, with the file named.

use std::path::Path;

/// `src/lib.rs`'s picture, bottom to top; one step per line. A module may
/// import from its own step only where the line says so (`a > b`: b uses a).
const LAYERS: &[&[&str]] = &[
    &["protocol", "config", "throttle", "httpconn"],
    &["codec", "metrics", "auth"],
    &["delivery"],
    &["rooms", "cluster"],
    &["outbox"],
    &["shared"],
    &["session"],
    &["connection"],
    &["http", "polling"],
    &["accept"],
    &["server"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|step| step.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is missing from the layer map"))
}

/// The top-level module a source file belongs to.
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let rel = path.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// Every `crate::<module>` a file names, outside its tests.
fn imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() && !found.contains(&name) {
            found.push(name);
        }
    }
    found
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_from_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut seen = 0;
    for path in all {
        let Some(module) = module_of(&path, &src) else {
            continue;
        };
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        for import in imports(&text) {
            if import == module {
                continue;
            }
            assert!(
                layer_of(&import) < layer_of(&module),
                "{}: {module} imports {import}, which is not below it",
                path.display()
            );
        }
    }
    assert!(seen > 20, "read the sources ({seen} files)");
}

#[test]
fn the_map_names_every_module_and_lib_rs_declares_them() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for module in LAYERS.iter().flat_map(|step| step.iter()) {
        assert!(
            lib.contains(&format!("mod {module};")),
            "lib.rs declares no module {module}"
        );
        assert!(
            lib.contains(&format!("`{module}`")) || lib.contains(&format!("[`{module}`]")),
            "lib.rs's picture does not name {module}"
        );
    }
}
