//! Embeds the tablet page (`web/`) in the binary: writes `$OUT_DIR/web_assets.rs`, a table of
//! every servable file under `web/` (HTML, JS, CSS, images, JSON) with `include_bytes!`, and asks
//! cargo to run again when any of them, or the folder, changes.

use std::path::{Path, PathBuf};

/// Extensions served by the device (documentation such as `vendor/README.md` is not).
const SERVED: [&str; 7] = ["html", "js", "css", "json", "png", "svg", "ico"];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut table = String::from("&[\n");
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under web/").to_string_lossy().replace('\\', "/");
        table += &format!("    Asset {{ path: {rel:?}, bytes: include_bytes!({:?}) }},\n", file.display().to_string());
    }
    table += "]\n";
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("web_assets.rs");
    std::fs::write(&out, table).expect("writing web_assets.rs");
}

/// Every servable file under `dir`, recursively; registers the folders and files with cargo.
fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| SERVED.contains(&e)) {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
}
