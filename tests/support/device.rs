//! The real device binary (`mcm-edge run`) as a child process.

use super::*;

/// `mcm-edge run` on models/tiny, as a child process.
pub struct Device {
    child: Option<std::process::Child>,
    config: std::path::PathBuf,
}

impl Device {
    pub fn start(config: &Path) -> Device {
        let mut d = Device { child: None, config: config.to_path_buf() };
        d.restart();
        d
    }

    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_mcm-edge"))
            .args(["run", "--config"])
            .arg(&self.config)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL: no DISCONNECT, no offline status of its own; the broker sends the last will.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Device {
    /// What the device wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }
}
