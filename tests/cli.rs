//! `mcm-edge check` and `run` refuse to start on a bad config or model, with a message naming the
//! file and the problem; a good config passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A scratch folder with a copy of models/tiny (to corrupt) and a config pointing at it.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("mcm-edge-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("model")).unwrap();
        for f in ["model.toml", "base.onnx", "mcm.onnx"] {
            std::fs::copy(Path::new(ROOT).join("models/tiny").join(f), dir.join("model").join(f)).unwrap();
        }
        Scratch { dir }
    }

    fn config(&self, text: &str) -> PathBuf {
        let path = self.dir.join("edge.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn good_config(&self) -> PathBuf {
        self.config(&format!("[mqtt]\ndevice_id = \"cli\"\n[model]\ndir = \"{}\"\n", self.dir.join("model").display()))
    }

    fn model_file(&self, name: &str) -> PathBuf {
        self.dir.join("model").join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mcm_edge(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcm-edge")).args(args).arg("--config").arg(config).current_dir(ROOT).output().unwrap()
}

/// `check` and `run` both fail, and stderr names every one of `needles`.
fn refused(config: &Path, needles: &[&str]) {
    for cmd in ["check", "run"] {
        let out = mcm_edge(&[cmd], config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted a bad setup");
        for n in needles {
            assert!(err.contains(n), "{cmd}: {n:?} missing from: {err}");
        }
    }
}

#[test]
fn good_config_passes_check() {
    let s = Scratch::new("good");
    let out = mcm_edge(&["check"], &s.good_config());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("OK") && text.contains("segmentation") && text.contains("16x16"), "{text}");
    // The shipped config, as on the board (models/default).
    let out = mcm_edge(&["check"], &Path::new(ROOT).join("config/edge.toml"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn corrupt_model_file_is_named() {
    let s = Scratch::new("corrupt");
    let base = s.model_file("base.onnx");
    let bytes = std::fs::read(&base).unwrap();
    std::fs::write(&base, &bytes[..bytes.len() / 3]).unwrap();
    refused(&s.good_config(), &["base.onnx"]);
}

#[test]
fn model_that_does_not_match_its_contract_is_named() {
    let s = Scratch::new("mismatch");
    let toml = s.model_file("model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replacen("size = 16", "size = 32", 1)).unwrap();
    refused(&s.good_config(), &["base.onnx", "32"]);
}

/// A model larger than this machine's memory (a sparse external-data file: no disk is used) is
/// refused with the sizes before anything is loaded, not killed by the kernel.
#[test]
fn a_model_larger_than_the_memory_is_refused_with_the_sizes() {
    let s = Scratch::new("too-large");
    let memory = mcm_edge::runtime::Memory::of_this_machine().expect("Linux");
    let data = std::fs::File::create(s.model_file("base.onnx.data")).unwrap();
    data.set_len(memory.limit_bytes + 1_000_000_000).unwrap();
    refused(&s.good_config(), &["does not fit in memory", "base.onnx(+.data)", "GB ("]);
}

#[test]
fn unknown_modality_kind_in_the_model_is_named() {
    let s = Scratch::new("kind");
    let toml = s.model_file("model.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replacen("kind = \"sketch\"", "kind = \"depth\"", 1)).unwrap();
    refused(&s.good_config(), &["model.toml", "depth"]);
}

#[test]
fn config_problems_are_named() {
    let s = Scratch::new("config");
    refused(&s.config("[mqtt]\nport = 1883\n"), &["edge.toml", "mqtt.device_id", "missing"]);
    refused(&s.config("[mqtt]\ndevice_id = \"x\"\nhots = \"b\"\n"), &["edge.toml", "hots"]);
    refused(&s.config("[mqtt]\ndevice_id = \"x\"\n[model]\ndir = \"/nonexistent/model\"\n"), &["/nonexistent/model"]);
    let tls = "[mqtt]\ndevice_id = \"x\"\n[mqtt.tls]\nca_file = \"/nonexistent/ca.pem\"\n[model]\ndir = \"models/tiny\"\n";
    refused(&s.config(tls), &["edge.toml", "mqtt.tls.ca_file", "/nonexistent/ca.pem"]);
    let fb = "[mqtt]\ndevice_id = \"x\"\n[model]\ndir = \"models/tiny\"\n[display]\nenabled = true\nframebuffer = \"/nonexistent/fb9\"\n";
    refused(&s.config(fb), &["/nonexistent/fb9"]);
}
