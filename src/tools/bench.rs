//! `mcm-edge bench`: latency of the device pipeline on this machine (README "Speed"), with one
//! or several inference backends. Timings are medians over repeated runs, in milliseconds, taken
//! in one process (interleaved between backends) so that they compare as ratios even on a shared,
//! noisy machine.

use std::path::Path;
use std::time::Instant;

use image::ImageFormat;
use serde::Serialize;

use anyhow::Context;
use tract_onnx::prelude::IntoTensor;

use crate::contract::{Maps, build_cond};
use crate::diffusion::{GenerationParams, ImageGenerator, Noise, Pipeline, TextParams};
use crate::frames::{FrameLimits, decode_frame};
use crate::runtime::{Backend, BackendKind, OpTime, timestep_tensor};

/// What `mcm-edge bench` reports for one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    /// The backend that ran the nets, e.g. `tract, 2 threads` or `onnxruntime 1.32.0, 1 thread`.
    pub backend: String,
    /// Threads of one inference call (tract's pool, onnxruntime's intra-op threads).
    pub threads: usize,
    /// The onnxruntime shared library (onnxruntime only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    pub image_size: usize,
    /// Model load: read, check, optimize and plan (or create the sessions of) both nets.
    pub load_ms: f64,
    /// One denoising step with the base alone (strength 0).
    pub base_step_ms: f64,
    /// One denoising step with base + MCM (strength 1).
    pub mcm_step_ms: f64,
    /// (mcm_step - base_step) / base_step, in %.
    pub mcm_overhead_pct: f64,
    /// One call of `mcm.onnx` alone, timed directly (the MCM's own cost; on a large base the
    /// step difference drowns in the base's noise); `None` without an MCM.
    pub mcm_net_ms: Option<f64>,
    /// `mcm_net_ms / base_step_ms`, in %.
    pub mcm_net_pct: Option<f64>,
    pub steps: usize,
    /// Frame decode (PNG) -> `steps` DDIM steps with the MCM -> PNG encode.
    pub end_to_end_ms: f64,
    /// `1000 / end_to_end_ms`: images per second, one at a time.
    pub images_per_s: f64,
    /// Images per second and latency with several generations at once (`--workers`), one entry
    /// per worker count, in the order asked for.
    pub throughput: Vec<Throughput>,
    /// Peak resident memory of the process so far (Linux `VmHWM`), in MiB; `None` elsewhere. With
    /// several backends in one run, it covers all of them (they are loaded side by side).
    pub peak_rss_mib: Option<f64>,
    /// Time per tract operator kind in one call of each net, largest first (`--profile`; tract only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    /// The same nets through onnxruntime from Python (`bench/ort_bench.py` JSON, given with `--ort`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ort: Option<OrtComparison>,
}

/// Several generations at once, each on its own thread (what `[runtime] workers` does in the
/// service), every worker generating the same number of images end to end.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Generations at once.
    pub workers: usize,
    /// Images per worker in one timed round.
    pub images_per_worker: usize,
    /// `workers * images_per_worker / wall time` of a round (median round), images per second.
    pub images_per_s: f64,
    /// Mean time of one image inside a round, ms (its latency while the others run).
    pub latency_ms: f64,
    /// `images_per_s` against the first worker count's (1 when that is itself).
    pub speedup: f64,
}

/// What one `mcm-edge bench` run measures, besides the backends.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Sampling steps of one image end to end.
    pub steps: usize,
    /// Timed calls per step figure (end to end: at most 5; throughput: at most 3 rounds).
    pub runs: usize,
    /// Also time every tract operator kind of both nets.
    pub profile: bool,
    /// Generations at once for the throughput figures (at least one count; 1 = one at a time).
    pub workers: Vec<usize>,
}

/// Where the time of one call goes, per net.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub base: Vec<OpTime>,
    pub mcm: Vec<OpTime>,
}

/// This report's backend against onnxruntime from Python (`bench/ort_bench.py`) on the same ONNX
/// files and shapes, at the same thread count.
#[derive(Debug, Clone, Serialize)]
pub struct OrtComparison {
    /// onnxruntime's median for `base.onnx`, ms.
    pub base_ms: f64,
    /// onnxruntime's median for `mcm.onnx`, ms.
    pub mcm_ms: Option<f64>,
    /// This backend's base step / onnxruntime base.
    pub base_ratio: f64,
    /// This backend's MCM cost (`mcm_net_ms`, else mcm step - base step) / onnxruntime MCM.
    pub mcm_ratio: Option<f64>,
}

/// What `mcm-edge bench` reports for several backends timed in one process (`--backend both`):
/// the measurements are interleaved (each round times every backend once), so that the ratios
/// hold even on a shared, noisy machine.
#[derive(Debug, Clone, Serialize)]
pub struct BackendsReport {
    pub model: String,
    pub steps: usize,
    /// Timed calls per figure (end to end: at most 5).
    pub runs: usize,
    /// One report per backend, in the order asked for (tract first with `--backend both`).
    pub reports: Vec<BenchReport>,
    /// The first report's backend (tract) against each other one.
    pub ratios: Vec<BackendRatio>,
}

/// `baseline / other` for each figure: how many times slower the baseline is (> 1: slower).
#[derive(Debug, Clone, Serialize)]
pub struct BackendRatio {
    pub baseline: String,
    pub other: String,
    /// Base step.
    pub base_step: f64,
    /// Base + MCM step.
    pub mcm_step: f64,
    /// The MCM's own cost: one call of `mcm.onnx` (`mcm_net_ms`); `None` without an MCM.
    pub mcm_net: Option<f64>,
    /// One image end to end.
    pub end_to_end: f64,
}

impl BackendRatio {
    /// `baseline / other` for each figure.
    pub fn new(baseline: &BenchReport, other: &BenchReport) -> Self {
        BackendRatio {
            baseline: baseline.backend.clone(),
            other: other.backend.clone(),
            base_step: baseline.base_step_ms / other.base_step_ms,
            mcm_step: baseline.mcm_step_ms / other.mcm_step_ms,
            mcm_net: baseline.mcm_net_ms.zip(other.mcm_net_ms).map(|(a, b)| a / b),
            end_to_end: baseline.end_to_end_ms / other.end_to_end_ms,
        }
    }
}

impl BackendsReport {
    /// Collect `reports` (the first is the baseline of the ratios).
    pub fn new(reports: Vec<BenchReport>, runs: usize) -> Self {
        let ratios = match reports.split_first() {
            Some((first, rest)) => rest.iter().map(|r| BackendRatio::new(first, r)).collect(),
            None => Vec::new(),
        };
        BackendsReport {
            model: reports.first().map(|r| r.model.clone()).unwrap_or_default(),
            steps: reports.first().map_or(0, |r| r.steps),
            runs,
            reports,
            ratios,
        }
    }
}

impl BenchReport {
    /// Compare with an `ort_bench.py` report: its figures at this report's thread count.
    ///
    /// # Errors
    /// The JSON lacks `ms.base."N"` for this report's N threads.
    pub fn compare_ort(&mut self, ort: &serde_json::Value) -> anyhow::Result<()> {
        let threads = self.threads.to_string();
        let ms = |net: &str| ort["ms"][net][threads.as_str()].as_f64();
        let base_ms = ms("base").ok_or_else(|| anyhow::anyhow!("no ms.base.\"{threads}\" in the onnxruntime report"))?;
        let mcm_ms = ms("mcm");
        let mcm_net_ms = self.mcm_net_ms.unwrap_or(self.mcm_step_ms - self.base_step_ms);
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

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Milliseconds taken by `f`.
fn time_ms(f: impl FnOnce()) -> f64 {
    let s = Instant::now();
    f();
    s.elapsed().as_secs_f64() * 1e3
}

/// A timed operation of one generator.
type Variant<'a> = &'a mut dyn FnMut(&Pipeline) -> anyhow::Result<()>;

/// `count` rounds, each timing every variant once on every generator in order (so that drift of
/// a shared machine hits all of them alike); the median per variant and generator, ms
/// (`[variant][generator]`).
fn interleaved(generators: &[&Pipeline], count: usize, variants: &mut [Variant<'_>]) -> anyhow::Result<Vec<Vec<f64>>> {
    let mut times = vec![vec![Vec::with_capacity(count); generators.len()]; variants.len()];
    for _ in 0..count {
        for (f, per_generator) in variants.iter_mut().zip(&mut times) {
            for (g, t) in generators.iter().zip(per_generator) {
                let mut result = Ok(());
                t.push(time_ms(|| result = f(g)));
                result?;
            }
        }
    }
    Ok(times.into_iter().map(|v| v.into_iter().map(median).collect()).collect())
}

/// One image end to end on a generator.
type Generate<'a> = &'a (dyn Fn(&Pipeline) -> anyhow::Result<()> + Sync);

/// Images per second with each of `workers` generations at once, for every generator: `rounds`
/// rounds, each timing every (generator, worker count) once, in which each of `w` threads makes
/// `images` images with `generate`; medians of the round times (`[generator][worker count]`).
///
/// # Errors
/// The first failing generation.
fn throughput(generators: &[&Pipeline], workers: &[usize], rounds: usize, images: usize, generate: Generate<'_>) -> anyhow::Result<Vec<Vec<Throughput>>> {
    let mut walls = vec![vec![Vec::new(); workers.len()]; generators.len()];
    let mut latencies = vec![vec![Vec::new(); workers.len()]; generators.len()];
    for _ in 0..rounds {
        for (gi, g) in generators.iter().enumerate() {
            for (wi, &w) in workers.iter().enumerate() {
                let start = Instant::now();
                let per_worker: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..w)
                        .map(|_| {
                            s.spawn(|| {
                                let mut times = Vec::with_capacity(images);
                                for _ in 0..images {
                                    let mut result = Ok(());
                                    times.push(time_ms(|| result = generate(g)));
                                    result?;
                                }
                                Ok(times)
                            })
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
                });
                walls[gi][wi].push(start.elapsed().as_secs_f64());
                for times in per_worker {
                    latencies[gi][wi].extend(times?);
                }
            }
        }
    }
    Ok(walls
        .into_iter()
        .zip(latencies)
        .map(|(walls, latencies)| {
            let rates: Vec<f64> = walls.into_iter().zip(workers).map(|(w, &n)| (n * images) as f64 / median(w)).collect();
            rates
                .iter()
                .zip(workers)
                .zip(latencies)
                .map(|((&rate, &n), l)| Throughput {
                    workers: n,
                    images_per_worker: images,
                    images_per_s: rate,
                    latency_ms: l.iter().sum::<f64>() / l.len().max(1) as f64,
                    speedup: rate / rates[0],
                })
                .collect()
        })
        .collect())
}

/// Time the model in `dir` with each of `backends` in this process, `frame` (PNG/JPEG bytes of the
/// first modality) as the input map: medians over `plan.runs` calls (end to end: over at most 5
/// images of `plan.steps` steps; throughput: at most 3 rounds of 2 images per worker for each of
/// `plan.workers`), interleaved: every round of every figure times each backend once, so that
/// load on a shared machine hits them alike. One report per backend, in order; `plan.profile`
/// times tract's operators (tract backends only).
///
/// # Errors
/// No backend or worker count, model load (naming the file and the backend), frame decoding or
/// inference failures.
pub fn bench(dir: &Path, frame: &[u8], plan: &BenchPlan, backends: &[Backend]) -> anyhow::Result<Vec<BenchReport>> {
    anyhow::ensure!(!backends.is_empty(), "no backend to time");
    anyhow::ensure!(!plan.workers.is_empty() && !plan.workers.contains(&0), "worker counts must be at least 1");
    let BenchPlan { steps, runs, profile, .. } = *plan;
    let mut loaded = Vec::new();
    for backend in backends {
        let start = Instant::now();
        let generator = Pipeline::load(dir, backend).with_context(|| format!("loading {} with {}", dir.display(), backend.describe()))?;
        loaded.push((generator, start.elapsed().as_secs_f64() * 1e3));
    }
    let info = loaded[0].0.info().clone();
    let modality = info.modalities.first().ok_or_else(|| anyhow::anyhow!("{}: the model has no modalities", dir.display()))?;
    let size = info.image.size;
    let decode = || -> anyhow::Result<Maps> {
        Ok([(modality.name.clone(), decode_frame(frame, modality, size, &FrameLimits::default())?)].into())
    };
    let cond = build_cond(&info, &decode()?)?;
    let x = Noise::new(0).randn(loaded[0].0.sample_shape());
    // A text model's steps at its own guidance scale with the empty prompt (2 base passes with
    // classifier-free guidance): the embedding is made once, as a generation makes it.
    let prompt = loaded[0].0.prompt(&TextParams::default())?;
    let prompt = prompt.as_ref();
    let strength = if info.mcm.is_some() { 1.0 } else { 0.0 };
    let runs = runs.max(1);
    for (generator, _) in &loaded {
        for _ in 0..3 {
            generator.eps(&x, 500, &cond, prompt, strength)?; // warm-up (onnxruntime's first calls are slower)
        }
    }
    let generators: Vec<&Pipeline> = loaded.iter().map(|(g, _)| g).collect();
    // Base step, base + MCM step and the MCM net alone, alternated in the same rounds.
    let t = timestep_tensor(500.0, 1);
    let eps = generators[0].eps(&x, 500, &cond, prompt, 0.0)?;
    let mcm_inputs = vec![x.clone().into_tensor(), eps.into_tensor(), cond.clone().into_tensor(), t];
    let mut base_f = |g: &Pipeline| g.eps(&x, 500, &cond, prompt, 0.0).map(drop).map_err(Into::into);
    let mut mcm_f = |g: &Pipeline| g.eps(&x, 500, &cond, prompt, 1.0).map(drop).map_err(Into::into);
    let mut net_f = |g: &Pipeline| {
        let mcm = g.models().mcm.as_ref().ok_or_else(|| anyhow::anyhow!("no MCM"))?;
        mcm.run(mcm_inputs.clone())?;
        Ok(())
    };
    let timed = if info.mcm.is_some() {
        interleaved(&generators, runs, &mut [&mut base_f, &mut mcm_f, &mut net_f])?
    } else {
        interleaved(&generators, runs, &mut [&mut base_f])?
    };
    let (base_step, mcm_step) = (&timed[0], timed.get(1).unwrap_or(&timed[0]));
    let mcm_net: Vec<Option<f64>> = match timed.get(2) {
        Some(net) => net.iter().copied().map(Some).collect(),
        None => vec![None; generators.len()],
    };
    let params = GenerationParams { seed: 0, steps, strength, eta: 0.0, text: TextParams::default() };
    let image = |g: &Pipeline| {
        let img = g.generate(&decode()?, &params)?;
        let mut png = std::io::Cursor::new(Vec::new());
        img.write_to(&mut png, ImageFormat::Png)?;
        Ok(())
    };
    let mut image_f = image;
    let end_to_end = interleaved(&generators, runs.min(5), &mut [&mut image_f])?.remove(0);
    let mut throughputs = throughput(&generators, &plan.workers, runs.min(3), 2, &image)?.into_iter();
    let mut reports = Vec::with_capacity(loaded.len());
    for (i, ((generator, load_ms), backend)) in loaded.iter().zip(backends).enumerate() {
        let profile = if profile && backend.kind == BackendKind::Tract {
            let models = generator.models();
            let (x_t, t) = (x.clone().into_tensor(), timestep_tensor(500.0, 1));
            let base = models.base.profile(generator.base_inputs(&x, 500, prompt), runs)?;
            let mcm = match &models.mcm {
                Some(net) => net.profile(vec![x_t.clone(), x_t, cond.clone().into_tensor(), t], runs)?,
                None => Vec::new(),
            };
            Some(Profile { base, mcm })
        } else {
            None
        };
        let (base_step_ms, mcm_step_ms, end_to_end_ms, mcm_net_ms) = (base_step[i], mcm_step[i], end_to_end[i], mcm_net[i]);
        reports.push(BenchReport {
            model: dir.display().to_string(),
            backend: generator.models().base.backend_description(),
            threads: backend.threads,
            library: generator.models().base.onnxruntime_library().map(|p| p.display().to_string()),
            image_size: size,
            load_ms: *load_ms,
            base_step_ms,
            mcm_step_ms,
            mcm_overhead_pct: 100.0 * (mcm_step_ms - base_step_ms) / base_step_ms,
            mcm_net_ms,
            mcm_net_pct: mcm_net_ms.map(|m| 100.0 * m / base_step_ms),
            steps,
            end_to_end_ms,
            images_per_s: 1000.0 / end_to_end_ms,
            throughput: throughputs.next().unwrap_or_default(),
            peak_rss_mib: peak_rss_mib(),
            profile,
            ort: None,
        });
    }
    Ok(reports)
}
