//! Whether a model fits in this device's memory, checked before any net is loaded: a model whose
//! weights exceed the RAM is refused with the sizes ([`ModelError::TooLarge`]) instead of being
//! killed by the kernel halfway through loading.

use std::path::{Path, PathBuf};

use super::error::ModelError;

/// The memory this process may use: the RAM (`MemTotal` of `/proc/meminfo`), or the cgroup's
/// limit (`memory.max`, cgroup v2) where that is lower; and what is free now (`MemAvailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Bytes this process can ever have.
    pub limit_bytes: u64,
    /// Where `limit_bytes` comes from: `"RAM"` or `"cgroup memory.max"`.
    pub limit_source: &'static str,
    /// Bytes free now (`MemAvailable`), when known.
    pub available_bytes: Option<u64>,
}

impl Memory {
    /// This machine's memory; `None` where `/proc/meminfo` cannot be read (not Linux).
    pub fn of_this_machine() -> Option<Memory> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| {
            meminfo.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()).map(|kib| kib * 1024)
        };
        let ram = field("MemTotal:")?;
        let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok().and_then(|s| s.trim().parse::<u64>().ok());
        let (limit_bytes, limit_source) = match cgroup {
            Some(c) if c < ram => (c, "cgroup memory.max"),
            _ => (ram, "RAM"),
        };
        Some(Memory { limit_bytes, limit_source, available_bytes: field("MemAvailable:") })
    }
}

/// `NAME.onnx.data`: where `mcm-train export-diffusers` puts a net's external data.
fn external_data(onnx: &Path) -> PathBuf {
    let mut data = onnx.as_os_str().to_owned();
    data.push(".data");
    PathBuf::from(data)
}

/// One net's weights on disk: the ONNX file and its external data (`NAME.onnx.data`, as
/// `mcm-train export-diffusers` writes it), in bytes.
pub fn weights_bytes(onnx: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    size(onnx) + size(&external_data(onnx))
}

/// `base.onnx` or `base.onnx(+.data)`: a net's name in the sizes.
fn label(onnx: &Path) -> String {
    let name = onnx.file_name().map_or_else(|| onnx.display().to_string(), |n| n.to_string_lossy().into_owned());
    if external_data(onnx).is_file() { format!("{name}(+.data)") } else { name }
}

/// `12.3 GB` / `456 MB` / `5 kB`: bytes in decimal units, as file managers show them.
fn human(bytes: u64) -> String {
    match bytes {
        1_000_000_000.. => format!("{:.1} GB", bytes as f64 / 1e9),
        1_000_000.. => format!("{:.0} MB", bytes as f64 / 1e6),
        _ => format!("{:.0} kB", bytes as f64 / 1e3),
    }
}

/// Check that the weights of `nets` (their files, [`weights_bytes`]), held `copies` times (one per
/// onnxruntime session; tract holds them once), fit in `memory`; a warning is logged when they
/// fit the limit but not what is free now.
///
/// # Errors
/// [`ModelError::TooLarge`] naming `dir`, every net's size, the total and the limit.
pub fn check_fits(dir: &Path, nets: &[PathBuf], copies: usize, memory: &Memory) -> Result<(), ModelError> {
    let sizes: Vec<(String, u64)> = nets
        .iter()
        .map(|p| (label(p), weights_bytes(p)))
        .collect();
    let needed = sizes.iter().map(|(_, b)| b).sum::<u64>().saturating_mul(copies.max(1) as u64);
    let detail = || {
        let each: Vec<String> = sizes.iter().map(|(n, b)| format!("{n} {}", human(*b))).collect();
        let copies = if copies > 1 { format!(" x {copies} onnxruntime sessions") } else { String::new() };
        format!("{}{copies} = {}", each.join(" + "), human(needed))
    };
    if needed > memory.limit_bytes {
        return Err(ModelError::TooLarge {
            dir: dir.to_path_buf(),
            detail: detail(),
            limit: format!("{} ({})", human(memory.limit_bytes), memory.limit_source),
        });
    }
    if let Some(free) = memory.available_bytes
        && needed > free
    {
        log::warn!("{}: the weights ({}) exceed the memory free now ({}): loading may swap or fail", dir.display(), detail(), human(free));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_count_the_external_data_and_a_model_beyond_the_limit_is_refused() {
        let dir = std::env::temp_dir().join(format!("mcm-memory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("base.onnx"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.join("base.onnx.data"), vec![0u8; 4000]).unwrap();
        std::fs::write(dir.join("mcm.onnx"), vec![0u8; 2000]).unwrap();
        assert_eq!(weights_bytes(&dir.join("base.onnx")), 5000);
        let nets = [dir.join("base.onnx"), dir.join("mcm.onnx")];
        let memory = |limit_bytes| Memory { limit_bytes, limit_source: "RAM", available_bytes: Some(limit_bytes / 2) };
        assert!(check_fits(&dir, &nets, 1, &memory(7000)).is_ok(), "exactly the limit fits");
        let err = check_fits(&dir, &nets, 1, &memory(6999)).unwrap_err().to_string();
        assert!(err.contains("base.onnx(+.data) 5 kB + mcm.onnx 2 kB = 7 kB") && err.contains("7 kB (RAM)"), "{err}");
        let err = check_fits(&dir, &nets, 2, &memory(13_999)).unwrap_err().to_string();
        assert!(err.contains("x 2 onnxruntime sessions"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sizes_read_as_people_read_them() {
        assert_eq!(human(3_438_000_000), "3.4 GB");
        assert_eq!(human(257_000_000), "257 MB");
        assert_eq!(human(5_000), "5 kB");
        let memory = Memory::of_this_machine().expect("Linux");
        assert!(memory.limit_bytes > 100_000_000 && memory.available_bytes.is_some(), "{memory:?}");
    }
}
