//! `mcm-edge`: the device binary. `mcm-edge --help` lists the commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use mcm_edge::config::{EdgeConfig, GenerationConfig};
use mcm_edge::contract::{Maps, ModelInfo};
use mcm_edge::diffusion::{GenerationParams, ImageGenerator, Pipeline, TextParams};
use mcm_edge::display::StatusDisplay;
use mcm_edge::frames::{FrameLimits, decode_frame};
use mcm_edge::mqtt::Settings;
use mcm_edge::runtime::{Backend, BackendKind, Precision, available_cores};
use mcm_edge::service;
use mcm_edge::tools::bench;
use mcm_edge::tools::demo::{self, DemoOptions};
use mcm_edge::tools::eval::{EvalOptions, evaluate};
use mcm_edge::tools::{info, verify};

#[derive(Parser)]
#[command(name = "mcm-edge", version, about = "Sketch / segmentation frames -> images with an MCM-steered frozen diffusion model")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The inference backend options of generate, eval and demo (run and check read `[runtime]`).
#[derive(Args)]
struct BackendArgs {
    /// Inference backend.
    #[arg(long, value_enum, default_value = "tract")]
    backend: BackendKind,
    /// libonnxruntime shared library for --backend onnxruntime (default: $ORT_DYLIB_PATH).
    #[arg(long, value_name = "FILE")]
    ort_library: Option<PathBuf>,
    /// Threads of each inference call, both backends [default: the cores this process may use]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// tract's precision; f16 on a CPU without fp16 arithmetic is emulated (accuracy checks
    /// only), except for demo, which refuses it there as the service does.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
}

impl BackendArgs {
    /// The backend asked for; `emulate_f16`: allow f16 where the CPU has no fp16 arithmetic.
    fn backend_with(&self, emulate_f16: bool) -> Backend {
        Backend::new(self.backend, self.ort_library.clone(), self.threads.map_or_else(available_cores, usize::from))
            .with_precision(self.precision, emulate_f16)
    }

    /// The backend of the accuracy tools (generate, verify, eval): f16 may be emulated.
    fn backend(&self) -> Backend {
        self.backend_with(true)
    }
}

/// Strength and the edge config of demo, generate, bench and eval; what is not given (with their
/// `--steps`) comes from the model (a distilled base's own step count, `[schedule] timesteps`)
/// and then from `[generation]` of the edge config, as for the service.
#[derive(Args)]
struct GenerationArgs {
    /// Conditioning strength [default: `[generation] strength` of --config]
    #[arg(long)]
    strength: Option<f32>,
    /// Edge config whose `[generation]` gives the defaults (built-in defaults when the file is absent)
    #[arg(long, default_value = "config/edge.toml")]
    config: PathBuf,
}

impl GenerationArgs {
    /// `[generation]` of `--config`, or the built-in defaults when the file is absent.
    fn generation(&self) -> Result<GenerationConfig> {
        Ok(if self.config.exists() { EdgeConfig::load(&self.config)?.generation } else { GenerationConfig::default() })
    }

    /// `(steps, strength, eta)` for the model in `model_dir`, `steps` unless None.
    fn resolve(&self, model_dir: &Path, steps: Option<usize>) -> Result<(usize, f32, f32)> {
        let generation = self.generation()?;
        let info = ModelInfo::load(model_dir)?;
        Ok((steps.unwrap_or_else(|| generation.steps_for(&info)), self.strength.unwrap_or(generation.strength_for(&info)), generation.eta))
    }
}

/// The prompt options of `generate` (text-conditional models only).
#[derive(clap::Args)]
struct PromptArgs {
    /// What to generate [default: `[generation] prompt` of --config]
    #[arg(long)]
    prompt: Option<String>,
    /// What classifier-free guidance steers away from [default: `[generation] negative_prompt`]
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Classifier-free guidance scale, 0 to 30 [default: `[generation] guidance_scale`, else the model's]
    #[arg(long)]
    guidance_scale: Option<f32>,
}

impl PromptArgs {
    /// These options over the config's defaults for the model `info`.
    fn resolve(&self, generation: &GenerationConfig, info: &ModelInfo) -> TextParams {
        let defaults = generation.text_for(info);
        TextParams {
            prompt: self.prompt.clone().unwrap_or(defaults.prompt),
            negative_prompt: self.negative_prompt.clone().unwrap_or(defaults.negative_prompt),
            guidance_scale: self.guidance_scale.or(defaults.guidance_scale),
        }
    }
}

/// `--backend` of bench.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchBackendArg {
    /// tract alone.
    Tract,
    /// onnxruntime alone.
    Onnxruntime,
    /// tract, then onnxruntime, timed interleaved in this process.
    Both,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MQTT service (README "MQTT interface") until SIGINT/SIGTERM.
    Run {
        #[arg(long, default_value = "config/edge.toml")]
        config: PathBuf,
    },
    /// Validate the config and everything it names (model files, TLS and password files,
    /// framebuffer) without connecting; exit status 1 with the file and the problem otherwise.
    Check {
        #[arg(long, default_value = "config/edge.toml")]
        config: PathBuf,
    },
    /// The whole loop with no setup: in-process broker, service, sample frames, contact sheet.
    Demo {
        #[arg(long, default_value = "models/default")]
        model: PathBuf,
        #[arg(long, default_value = "config/samples")]
        samples: PathBuf,
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        /// HOST:PORT of an MQTT broker to use instead of the in-process one.
        #[arg(long)]
        broker: Option<String>,
        /// With --broker: the broker's WebSocket URL for the tablet page (ws:// or wss://)
        /// [default: port 9001 on the page's host].
        #[arg(long, value_name = "URL", requires = "broker")]
        broker_ws_url: Option<String>,
        /// HOST:PORT the tablet page is served on after the sheet (0.0.0.0:PORT for tablets on
        /// the network; port 0 picks a free one).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
        serve: String,
        /// Exit after the sheet instead of serving the tablet page (scripts, CI).
        #[arg(long)]
        no_serve: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// DDIM steps [default: the model's distilled count, else `[generation] steps` of --config]
        #[arg(long)]
        steps: Option<usize>,
        #[command(flatten)]
        generation: GenerationArgs,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Generate one image from map files (no MQTT).
    Generate {
        #[arg(long, default_value = "models/default")]
        model: PathBuf,
        /// Map files as MODALITY=PATH, e.g. segmentation=map.png sketch=lines.png (none: a
        /// prompt alone, for a text-conditional model).
        maps: Vec<String>,
        #[arg(long, default_value = "out.png")]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// DDIM steps [default: the model's distilled count, else `[generation] steps` of --config]
        #[arg(long)]
        steps: Option<usize>,
        #[command(flatten)]
        generation: GenerationArgs,
        /// DDIM eta [default: `[generation] eta` of --config]
        #[arg(long)]
        eta: Option<f32>,
        #[command(flatten)]
        prompt: PromptArgs,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Time the device pipeline (load, base step, base + MCM step, one image end to end) with one
    /// backend, or with several in one process (`--backend both`: tract / onnxruntime ratios).
    Bench {
        #[arg(long, default_value = "models/default")]
        model: PathBuf,
        /// Input frame of the model's first modality.
        #[arg(long, default_value = "config/samples/segmentation/tablet-0.png")]
        frame: PathBuf,
        /// DDIM steps [default: the model's distilled count, else `[generation] steps` of --config]
        #[arg(long)]
        steps: Option<usize>,
        #[command(flatten)]
        generation: GenerationArgs,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long)]
        json: Option<PathBuf>,
        /// `bench/ort_bench.py` report of the same model: adds ratios of each backend to onnxruntime from Python.
        #[arg(long)]
        ort: Option<PathBuf>,
        /// Also time every tract operator kind of both nets.
        #[arg(long)]
        profile: bool,
        /// Inference backend(s).
        #[arg(long, value_enum, default_value = "tract")]
        backend: BenchBackendArg,
        /// libonnxruntime shared library for onnxruntime (default: $ORT_DYLIB_PATH).
        #[arg(long, value_name = "FILE")]
        ort_library: Option<PathBuf>,
        /// Threads per inference call, comma-separated: one report per backend and count
        /// [default: the cores this process may use]
        #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=256))]
        threads: Vec<u16>,
        /// Generations at once, comma-separated: images/s and latency of each, per report.
        #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: Vec<u16>,
    },
    /// A model directory's cost: parameters, file sizes and tract's FLOP estimate of each net,
    /// one sampling step and one image.
    Info {
        /// The model directory.
        model: PathBuf,
        /// Steps of the image figure [default: the model's distilled count, else `[generation] steps` of --config]
        #[arg(long)]
        steps: Option<usize>,
        /// Print JSON (what `mcm-train export-diffusers` records in model.toml).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        generation: GenerationArgs,
    },
    /// Replay a model directory's test vectors (written by mcm-train from PyTorch and diffusers)
    /// through the backend: every net, the tokenizer, and diffusers' own pipeline runs; exit
    /// status 1 when any output differs beyond its tolerance.
    Verify {
        /// The model directory (e.g. the output of `mcm-train export-diffusers`).
        model: PathBuf,
        /// Print the checks as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        backend: BackendArgs,
    },
    /// Evaluate a model through the device pipeline and write the metrics as JSON.
    Eval {
        #[arg(long, default_value = "models/default")]
        model: PathBuf,
        /// Held-out dataset folder (images/, segmentation/, sketch/, and depth/ etc. for each dense modality with an estimator).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[arg(long, default_value_t = 64)]
        limit: usize,
        /// DDIM step counts, comma-separated, e.g. 4,20: one report each, same seeds (a JSON list
        /// for several) [default: the model's distilled count, else `[generation] steps` of --config]
        #[arg(long, value_delimiter = ',')]
        steps: Vec<usize>,
        #[command(flatten)]
        generation: GenerationArgs,
        #[arg(long, default_value_t = 1000)]
        seed: u64,
        #[command(flatten)]
        backend: BackendArgs,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info,rumqttd=off,tracing=off")).init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcm-edge: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// mosquitto's default `max_inflight_messages`: unacknowledged QoS > 0 messages per client.
const MOSQUITTO_INFLIGHT: usize = 20;

/// The error and its causes, `: `-separated, leaving out a cause whose text is already part of
/// the message (our error types name their source in their own text).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Load the config and the model it names with the `[runtime]` backend (tract plans or
/// onnxruntime sessions are built, so a corrupt or mismatched ONNX file, or a missing onnxruntime
/// library, fails here); errors name the file and the problem. `run` then reads the credential
/// and TLS files and opens the display before it connects ([`service::run`]); `check` does the
/// same without connecting.
fn load(path: &Path) -> Result<(EdgeConfig, Pipeline)> {
    let config = EdgeConfig::load(path)?;
    let generator = Pipeline::load(&config.model.dir, &config.runtime.backend()).with_context(|| {
        format!("{}: model.dir = {}, runtime.backend = {}", path.display(), config.model.dir.display(), config.runtime.backend.name())
    })?;
    Ok((config, generator))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run { config: path } => {
            let (config, generator) = load(&path)?;
            let shutdown = service::shutdown_on_signals().context("installing signal handlers")?;
            let summary = service::run(&config, Arc::new(generator), shutdown).with_context(|| path.display().to_string())?;
            log::info!("stopped: {}", serde_json::to_string(&summary)?);
        }
        Command::Check { config: path } => {
            let (config, generator) = load(&path)?;
            Settings::from_config(&config.mqtt).with_context(|| path.display().to_string())?;
            StatusDisplay::new(&config.display).with_context(|| path.display().to_string())?;
            let info = generator.info();
            let (host, port) = config.mqtt.broker_address()?;
            let modalities: Vec<&str> = info.modalities.iter().map(|m| m.name.as_str()).collect();
            println!("{}: OK", path.display());
            println!("  device {:?}, client id {:?}, topics {}*", config.mqtt.device_id, config.mqtt.client_id(), config.mqtt.topic_prefix());
            println!("  broker {host}:{port}, MQTT {}, TLS {}", u8::from(config.mqtt.protocol), if config.mqtt.tls().is_some() { "on" } else { "off" });
            println!("  model {}: {}x{} image, modalities {modalities:?}", config.model.dir.display(), info.image.size, info.image.size);
            if let Some(l) = &info.latent {
                let [c, h, w] = info.sample_shape();
                println!("  latent {c}x{h}x{w} ({}), sampler {}", l.vae.as_deref().unwrap_or("decoder.onnx"), info.schedule.sampler.name());
            }
            if let Some(t) = &info.text {
                println!("  text: prompts of up to {} tokens, default guidance {}", t.max_length, config.generation.guidance_scale.or(t.guidance_scale).unwrap_or(mcm_edge::diffusion::DEFAULT_GUIDANCE_SCALE));
            }
            let workers = config.runtime.workers;
            println!("  backend: {}, {workers} worker{}", generator.models().base.backend_description(), if workers == 1 { "" } else { "s" });
            println!("  status display: {}", config.display.describe());
            if config.limits.queue_depth >= MOSQUITTO_INFLIGHT {
                println!(
                    "  note: limits.queue_depth = {} reaches mosquitto's default in-flight window ({MOSQUITTO_INFLIGHT}): \
                     requests are acknowledged once answered, so the broker holds back further messages \
                     (raise max_inflight_messages on the broker, or lower queue_depth)",
                    config.limits.queue_depth
                );
            }
        }
        Command::Demo { model, samples, out, broker, broker_ws_url, serve, no_serve, seed, steps, generation, backend } => {
            let (steps, strength, _) = generation.resolve(&model, steps)?;
            let serve = (!no_serve).then_some(serve);
            let opts = DemoOptions { model, samples, out, broker, steps, seed, strength, backend: backend.backend_with(false), serve, broker_ws_url };
            demo::run(&opts)?;
        }
        Command::Generate { model, maps, out, seed, steps, generation, eta, prompt, backend } => {
            let (steps, strength, default_eta) = generation.resolve(&model, steps)?;
            let eta = eta.unwrap_or(default_eta);
            let generator = Pipeline::load(&model, &backend.backend())?;
            let info = generator.info();
            let text = prompt.resolve(&generation.generation()?, info);
            if maps.is_empty() && text.prompt.is_empty() {
                let or_prompt = if info.text.is_some() { ", or a --prompt" } else { "" };
                anyhow::bail!("give at least one map as MODALITY=PATH{or_prompt}");
            }
            let mut decoded = Maps::new();
            for arg in &maps {
                let (name, path) = arg.split_once('=').with_context(|| format!("{arg:?}: expected MODALITY=PATH"))?;
                let modality = info.modality(name).with_context(|| {
                    let known: Vec<&str> = info.modalities.iter().map(|m| m.name.as_str()).collect();
                    format!("unknown modality {name:?} (the model has {known:?})")
                })?;
                let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
                let map = decode_frame(&bytes, modality, info.image.size, &FrameLimits::default()).with_context(|| path.to_string())?;
                decoded.insert(name.to_string(), map);
            }
            let start = std::time::Instant::now();
            let img = generator.generate(&decoded, &GenerationParams { seed, steps, strength, eta, text })?;
            img.save(&out).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {} in {:.0} ms", out.display(), start.elapsed().as_secs_f64() * 1e3);
        }
        Command::Bench { model, frame, steps, generation, runs, json, ort, profile, backend, ort_library, threads, workers } => {
            let (steps, _, _) = generation.resolve(&model, steps)?;
            let bytes = std::fs::read(&frame).with_context(|| format!("reading {}", frame.display()))?;
            let kinds = match backend {
                BenchBackendArg::Tract => vec![BackendKind::Tract],
                BenchBackendArg::Onnxruntime => vec![BackendKind::Onnxruntime],
                BenchBackendArg::Both => vec![BackendKind::Tract, BackendKind::Onnxruntime],
            };
            let threads: Vec<usize> = if threads.is_empty() { vec![available_cores()] } else { threads.into_iter().map(usize::from).collect() };
            let workers: Vec<usize> = workers.into_iter().map(usize::from).collect();
            let concurrency = workers.iter().copied().max().unwrap_or(1);
            let backends: Vec<Backend> = kinds
                .iter()
                .flat_map(|&kind| threads.iter().map(move |&t| (kind, t)))
                .map(|(kind, t)| Backend::new(kind, ort_library.clone(), t).with_concurrency(concurrency))
                .collect();
            let mut reports = bench::bench(&model, &bytes, &bench::BenchPlan { steps, runs, profile, workers }, &backends)?;
            if let Some(ort) = ort {
                let text = std::fs::read_to_string(&ort).with_context(|| format!("reading {}", ort.display()))?;
                let value: serde_json::Value = serde_json::from_str(&text).with_context(|| ort.display().to_string())?;
                for report in &mut reports {
                    report.compare_ort(&value).with_context(|| ort.display().to_string())?;
                }
            }
            let text = if reports.len() == 1 {
                serde_json::to_string_pretty(&reports[0])?
            } else {
                serde_json::to_string_pretty(&bench::BackendsReport::new(reports, runs))?
            };
            if let Some(json) = json {
                std::fs::write(&json, &text).with_context(|| format!("writing {}", json.display()))?;
            }
            println!("{text}");
        }
        Command::Info { model, steps, json, generation } => {
            let (steps, _, _) = generation.resolve(&model, steps)?;
            let cost = info::model_cost(&model, steps)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&cost)?);
            } else {
                print!("{}", info::format_cost(&model, &cost));
            }
        }
        Command::Verify { model, json, backend } => {
            let checks = verify::verify(&model, &backend.backend())?;
            let failed = checks.iter().filter(|c| !c.ok()).count();
            if json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for c in &checks {
                    println!("{} {}: max abs diff {:.2e} (tolerance {:.0e})", if c.ok() { "ok  " } else { "FAIL" }, c.what, c.max_abs_diff, c.tolerance);
                }
                println!("{}: {} of {} checks passed", model.display(), checks.len() - failed, checks.len());
            }
            if failed > 0 {
                std::process::exit(1);
            }
        }
        Command::Eval { model, data, json, limit, steps, generation, seed, backend } => {
            let counts: Vec<Option<usize>> = if steps.is_empty() { vec![None] } else { steps.into_iter().map(Some).collect() };
            let mut reports = Vec::new();
            for count in counts {
                let (steps, strength, _) = generation.resolve(&model, count)?;
                reports.push(evaluate(&model, &data, &EvalOptions { limit, steps, strength, seed }, &backend.backend())?);
            }
            let text =
                if reports.len() == 1 { serde_json::to_string_pretty(&reports[0])? } else { serde_json::to_string_pretty(&reports)? };
            std::fs::write(&json, &text).with_context(|| format!("writing {}", json.display()))?;
            println!("{text}");
        }
    }
    Ok(())
}
