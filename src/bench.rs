//! `mcm-edge bench`: latency of the device pipeline on this machine (README "Speed"). Timings
//! are medians over repeated runs, in milliseconds, taken in one process so that they compare as
//! ratios even on a shared, noisy machine.

use std::path::Path;
use std::time::Instant;

use image::ImageFormat;
use serde::Serialize;

use crate::cond::{Maps, build_cond};
use crate::frames::{FrameLimits, decode_frame};
use crate::model::{OpTime, timestep_tensor};
use tract_onnx::prelude::IntoTensor;
use crate::pipeline::{GenerationParams, ImageGenerator, TractGenerator};
use crate::sampler::Noise;

/// What `mcm-edge bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub image_size: usize,
    /// Model load: read, check, optimize and plan both nets.
    pub load_ms: f64,
    /// One denoising step with the base alone (strength 0).
    pub base_step_ms: f64,
    /// One denoising step with base + MCM (strength 1).
    pub mcm_step_ms: f64,
    /// (mcm_step - base_step) / base_step, in %.
    pub mcm_overhead_pct: f64,
    pub steps: usize,
    /// Frame decode (PNG) -> `steps` DDIM steps with the MCM -> PNG encode.
    pub end_to_end_ms: f64,
    /// `1000 / end_to_end_ms`: images per second, one at a time.
    pub images_per_s: f64,
    /// Peak resident memory of the process so far (Linux `VmHWM`), in MiB; `None` elsewhere.
    pub peak_rss_mib: Option<f64>,
    /// Time per tract operator kind in one call of each net, largest first (`--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// The same nets through onnxruntime (`bench/ort_bench.py` JSON, given with `--ort`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ort: Option<OrtComparison>,
}

/// Where the time of one call goes, per net.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub base: Vec<OpTime>,
    pub mcm: Vec<OpTime>,
}

/// tract against onnxruntime on the same ONNX files and shapes, one thread each.
#[derive(Debug, Clone, Serialize)]
pub struct OrtComparison {
    /// onnxruntime's median for `base.onnx`, ms.
    pub base_ms: f64,
    /// onnxruntime's median for `mcm.onnx`, ms.
    pub mcm_ms: Option<f64>,
    /// tract base step / onnxruntime base.
    pub base_ratio: f64,
    /// tract MCM cost (mcm step - base step) / onnxruntime MCM.
    pub mcm_ratio: Option<f64>,
}

impl BenchReport {
    /// Compare with an `ort_bench.py` report (its 1-thread figures: tract runs on one thread).
    ///
    /// # Errors
    /// The JSON lacks `ms.base."1"`.
    pub fn compare_ort(&mut self, ort: &serde_json::Value) -> anyhow::Result<()> {
        let ms = |net: &str| ort["ms"][net]["1"].as_f64();
        let base_ms = ms("base").ok_or_else(|| anyhow::anyhow!("no ms.base.\"1\" in the onnxruntime report"))?;
        let mcm_ms = ms("mcm");
        let mcm_net_ms = self.mcm_step_ms - self.base_step_ms;
        self.ort = Some(OrtComparison {
            base_ms,
            mcm_ms,
            base_ratio: self.base_step_ms / base_ms,
            mcm_ratio: mcm_ms.map(|m| mcm_net_ms / m),
        });
        Ok(())
    }
}

/// Peak resident set size of this process in MiB, from `/proc/self/status` (`VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib / 1024.0)
}

fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Time the model in `dir` with `frame` (PNG/JPEG bytes of the first modality) as the input map.
///
/// # Errors
/// Model load, frame decoding or inference failures.
pub fn bench(dir: &Path, frame: &[u8], steps: usize, runs: usize, profile: bool) -> anyhow::Result<BenchReport> {
    let start = Instant::now();
    let generator = TractGenerator::load(dir)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let info = generator.info().clone();
    let modality = info.modalities.first().ok_or_else(|| anyhow::anyhow!("{}: the model has no modalities", dir.display()))?;
    let size = info.image.size;
    let decode = || -> anyhow::Result<Maps> {
        Ok([(modality.name.clone(), decode_frame(frame, modality, size, &FrameLimits::default())?)].into())
    };
    let cond = build_cond(&info, &decode()?)?;
    let x = Noise::new(0).randn([1, info.image.channels, size, size]);
    let runs = runs.max(1);
    generator.eps(&x, 500, &cond, 1.0)?; // warm-up
    let base_step_ms = median_ms(runs, || {
        generator.eps(&x, 500, &cond, 0.0).expect("checked by the warm-up");
    });
    let mcm_step_ms = median_ms(runs, || {
        generator.eps(&x, 500, &cond, 1.0).expect("checked by the warm-up");
    });
    let params = GenerationParams { seed: 0, steps, strength: 1.0, eta: 0.0 };
    let mut failure = None;
    let end_to_end_ms = median_ms(runs.min(5), || {
        let result = decode().and_then(|maps| {
            let img = generator.generate(&maps, &params)?;
            let mut png = std::io::Cursor::new(Vec::new());
            img.write_to(&mut png, ImageFormat::Png)?;
            Ok(())
        });
        failure = failure.take().or(result.err());
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let profile = if profile {
        let models = generator.models();
        let (x_t, t) = (x.clone().into_tensor(), timestep_tensor(500.0, 1));
        let base = models.base.profile(vec![x_t.clone(), t.clone()], runs)?;
        let mcm = match &models.mcm {
            Some(net) => net.profile(vec![x_t.clone(), x_t, cond.clone().into_tensor(), t], runs)?,
            None => Vec::new(),
        };
        Some(Profile { base, mcm })
    } else {
        None
    };
    Ok(BenchReport {
        model: dir.display().to_string(),
        image_size: size,
        load_ms,
        base_step_ms,
        mcm_step_ms,
        mcm_overhead_pct: 100.0 * (mcm_step_ms - base_step_ms) / base_step_ms,
        steps,
        end_to_end_ms,
        images_per_s: 1000.0 / end_to_end_ms,
        peak_rss_mib: peak_rss_mib(),
        profile,
        ort: None,
    })
}
