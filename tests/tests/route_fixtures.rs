//! The mesh documents users bring from elsewhere must keep loading. `tests/fixtures/routes/`
//! holds one config per public example (the SMI specs, the Gateway API mesh conformance
//! suite and guides, Linkerd's docs), written for Skiff after it; its README says which
//! example each mirrors. Every file must load, and without warnings (no ignored fields, no
//! refused routes), except a `-refused` file, which shows a route Skiff refuses and so must
//! warn. A change to the config readers that breaks any of them fails here, naming the file.

use std::path::{Path, PathBuf};

#[test]
fn every_route_fixture_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/routes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 25,
        "{} holds {} fixtures; expected at least 25",
        dir.display(),
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        match skiff::config::load_file(path) {
            Err(e) => failures.push(format!("{name}: does not load:\n{e}")),
            Ok(config) => {
                let warnings: Vec<String> =
                    config.warnings.iter().map(|w| format!("{w}")).collect();
                if name.contains("-refused") {
                    if warnings.is_empty() {
                        failures.push(format!("{name}: loads without the refused route's warning"));
                    }
                } else if !warnings.is_empty() {
                    failures.push(format!("{name}: warns:\n{}", warnings.join("\n")));
                }
            }
        }
    }
    if !failures.is_empty() {
        panic!(
            "{} of {} route fixtures failed:\n\n{}",
            failures.len(),
            files.len(),
            failures.join("\n\n")
        );
    }
}
