//! Embeds the browser client: every file under `www/` becomes an entry of
//! `FILES` (path relative to `www/`, bytes), so the binary serves the page
//! without a folder beside it. Also the official Socket.IO client bundle
//! from `vendor/socket.io-client/` (`SOCKETIO_FILES`, and its version,
//! `SOCKETIO_VERSION`, read from that folder's README).

use std::fs;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("www");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out = String::from("pub(crate) static FILES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in &files {
        out.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    out.push_str("];\n");

    let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/socket.io-client");
    println!("cargo:rerun-if-changed={}", vendor.display());
    let readme =
        fs::read_to_string(vendor.join("README.md")).expect("the vendored client's README");
    let version = readme
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("a `Version:` line in vendor/socket.io-client/README.md");
    out.push_str(&format!(
        "pub(crate) const SOCKETIO_VERSION: &str = {version:?};\n"
    ));
    out.push_str("pub(crate) static SOCKETIO_FILES: &[(&str, &[u8])] = &[\n");
    for name in [
        "socket.io.js",
        "socket.io.js.map",
        "socket.io.min.js",
        "socket.io.min.js.map",
        "socket.io.esm.min.js",
        "socket.io.esm.min.js.map",
    ] {
        let path = vendor.join(name);
        assert!(path.is_file(), "{} is missing", path.display());
        out.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("www.rs");
    fs::write(dest, out).expect("OUT_DIR is writable");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(root, &path, files);
        } else if let Ok(rel) = path.strip_prefix(root) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            files.push((rel, path.display().to_string()));
        }
    }
}
