//! `mcm-edge demo`: the whole loop with no setup. Starts the in-process broker (unless a broker
//! is given), runs the service on a model directory, publishes the sample frames in
//! `config/samples/` as a tablet would, saves the returned PNGs and a contact sheet
//! (maps | base only | MCM with each map and with both, same seed) and prints per-image latency.
//! Then, unless told not to serve, it prints the tablet page's URL and keeps the broker (with its
//! WebSocket listener), the service and the page up until Ctrl-C: opening the page and painting
//! is the demo a person sees.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use image::RgbImage;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::json;

use super::broker;
use crate::config::{EdgeConfig, MqttProtocol};
use crate::contract::ModelInfo;
use crate::diffusion::{ImageGenerator, Pipeline};
use crate::display::{contact_sheet, render_map};
use crate::frames::{FrameLimits, decode_frame};
use crate::runtime::Backend;
use crate::service;
use crate::web;

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub model: PathBuf,
    /// Folder with `segmentation/NAME.png` and `sketch/NAME.png` pairs.
    pub samples: PathBuf,
    pub out: PathBuf,
    /// `host:port` of an external broker; None starts the in-process one.
    pub broker: Option<String>,
    pub steps: usize,
    pub seed: u64,
    /// Conditioning strength of the MCM cells.
    pub strength: f32,
    /// Inference backend of the service's model.
    pub backend: Backend,
    /// `HOST:PORT` to serve the tablet page on after the sheet, until Ctrl-C; `None`: exit after
    /// the sheet (`--no-serve`, for scripts and CI).
    pub serve: Option<String>,
    /// The broker's `ws://` / `wss://` URL for the page when `broker` is an external broker.
    pub broker_ws_url: Option<String>,
}

/// A named sample: its frames (PNG bytes) by modality name.
type Sample = (String, BTreeMap<String, Vec<u8>>);

/// One answer received by the demo client.
enum Answer {
    Image(Vec<u8>),
    Error(String),
}

/// Run the demo; returns the per-image latencies in ms.
///
/// # Errors
/// Missing samples or model, a broker that cannot be reached, an error answer, a timeout.
pub fn run(opts: &DemoOptions) -> Result<Vec<f64>> {
    let generator = Arc::new(Pipeline::load(&opts.model, &opts.backend)?);
    let samples = load_samples(&opts.samples)?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;

    let mut config = EdgeConfig::default();
    let (host, port) = match &opts.broker {
        Some(addr) => {
            let (h, p) = addr.rsplit_once(':').with_context(|| format!("--broker {addr:?}: expected HOST:PORT"))?;
            config.web.broker_url = opts.broker_ws_url.clone();
            (h.to_string(), p.parse().with_context(|| format!("--broker {addr:?}: bad port"))?)
        }
        None => {
            let ws = opts.serve.as_deref().map(ws_listen).transpose()?;
            let spec = broker::BrokerSpec { port: 0, v5_port: 0, ws, max_packet_bytes: config.mqtt.max_packet_bytes };
            let running = broker::start(&spec)?;
            if let Some(ws) = running.ws {
                config.web.broker_ws_port = ws.port();
            }
            ("127.0.0.1".to_string(), running.port)
        }
    };
    config.mqtt.host = host.clone();
    config.mqtt.port = port;
    config.mqtt.device_id = format!("demo-{}", std::process::id());
    config.mqtt.protocol = MqttProtocol::V311;
    config.mqtt.clean_session = true;
    config.model.dir = opts.model.clone();
    config.generation.steps = opts.steps;
    config.generation.strength = opts.strength;
    let prefix = config.mqtt.topic_prefix();

    // Serving: Ctrl-C ends the service; otherwise the demo does once the sheet is written.
    let shutdown = if opts.serve.is_some() { service::shutdown_on_signals().context("installing signal handlers")? } else { Arc::default() };
    let service = {
        let (config, generator, shutdown) = (config.clone(), Arc::clone(&generator), Arc::clone(&shutdown));
        std::thread::spawn(move || service::run(&config, generator as Arc<dyn ImageGenerator>, shutdown))
    };
    let result = drive(opts, &generator, &samples, &host, port, &prefix, config.mqtt.max_packet_bytes);
    if let Ok(latencies) = &result {
        let mean = latencies.iter().sum::<f64>() / latencies.len().max(1) as f64;
        println!("{} images, mean latency {mean:.0} ms per image ({} DDIM steps)", latencies.len(), opts.steps);
    }
    let served = match (&result, &opts.serve) {
        (Ok(_), Some(listen)) => serve_until_stopped(listen, &config, &shutdown),
        _ => Ok(()),
    };
    shutdown.store(true, Ordering::SeqCst);
    match service.join() {
        Ok(r) => {
            r.context("service")?;
        }
        Err(_) => bail!("the service thread panicked"),
    }
    served?;
    result
}

/// The WebSocket listener's address for a page served on `listen`: the same interface, a free
/// port.
fn ws_listen(listen: &str) -> Result<SocketAddr> {
    let (host, _) = listen.rsplit_once(':').with_context(|| format!("--serve {listen:?}: expected HOST:PORT"))?;
    let ip: IpAddr = host.trim_matches(['[', ']']).parse().with_context(|| format!("--serve {listen:?}: expected an IP address"))?;
    Ok(SocketAddr::new(ip, 0))
}

/// Serve the tablet page on `listen` until `shutdown` (Ctrl-C).
fn serve_until_stopped(listen: &str, config: &EdgeConfig, shutdown: &AtomicBool) -> Result<()> {
    let page = web::serve(listen, &service::page_config(config))?;
    println!("tablet page: {}", page.local_url());
    println!(
        "broker: mqtt://{}:{} (MQTT 3.1.1), WebSocket port {}; device topics {}#",
        config.mqtt.host, config.mqtt.port, config.web.broker_ws_port, config.mqtt.topic_prefix()
    );
    println!("open it in a browser (on a tablet: this machine's address instead of 127.0.0.1 with --serve 0.0.0.0:PORT); Ctrl-C stops");
    while !shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    page.stop();
    Ok(())
}

/// The tablet side: publish requests one at a time, collect the answers, write files.
fn drive(
    opts: &DemoOptions,
    generator: &Pipeline,
    samples: &[Sample],
    host: &str,
    port: u16,
    prefix: &str,
    max_packet: usize,
) -> Result<Vec<f64>> {
    let mut mqtt = MqttOptions::new(format!("mcm-demo-tablet-{}", std::process::id()), host, port);
    mqtt.set_max_packet_size(max_packet, max_packet).set_keep_alive(Duration::from_secs(30));
    let (client, mut connection) = Client::new(mqtt, 64);
    client.subscribe(format!("{prefix}image/+"), QoS::AtLeastOnce)?;
    client.subscribe(format!("{prefix}error"), QoS::AtLeastOnce)?;
    let (tx, answers) = mpsc::channel::<(String, Answer)>();
    let closing = Arc::new(AtomicBool::new(false));
    let closing_seen = Arc::clone(&closing);
    let image_prefix = format!("{prefix}image/");
    let error_topic = format!("{prefix}error");
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let answer = if let Some(id) = p.topic.strip_prefix(&image_prefix) {
                        (id.to_string(), Answer::Image(p.payload.to_vec()))
                    } else if p.topic == error_topic {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap_or_default();
                        (v["id"].as_str().unwrap_or("").to_string(), Answer::Error(String::from_utf8_lossy(&p.payload).into()))
                    } else {
                        continue;
                    };
                    if tx.send(answer).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) if closing_seen.load(Ordering::SeqCst) => break,
                Err(e) => {
                    log::warn!("demo client: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300)); // let the subscriptions land

    let info = generator.info();
    let s = opts.strength;
    let variants = demo_variants(info, s);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut latencies = Vec::new();
    let mut rows = Vec::new();
    for (name, frames) in samples {
        let mut row: Vec<RgbImage> = Vec::new();
        for m in &info.modalities {
            let bytes = frames.get(&m.name).with_context(|| format!("sample {name}: no {} frame", m.name))?;
            let map = decode_frame(bytes, m, info.image.size, &FrameLimits::default()).with_context(|| format!("sample {name}/{}", m.name))?;
            row.push(render_map(&map, m));
        }
        for (v, (label, use_maps, strength)) in variants.iter().enumerate() {
            let strength = *strength;
            let id = format!("{name}-{v}");
            let chosen: serde_json::Map<String, serde_json::Value> =
                use_maps.iter().filter_map(|m| frames.get(m).map(|b| (m.clone(), json!(b64.encode(b))))).collect();
            let request = json!({"id": id, "frames": chosen, "seed": opts.seed, "steps": opts.steps, "strength": strength});
            let start = Instant::now();
            client.publish(format!("{prefix}request"), QoS::AtLeastOnce, false, serde_json::to_vec(&request)?)?;
            let png = wait_for(&answers, &id)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            latencies.push(ms);
            println!("{id:>16} {label:<18} {ms:8.0} ms");
            std::fs::write(opts.out.join(format!("{id}.png")), &png)?;
            row.push(image::load_from_memory(&png).context("decoding an answer")?.to_rgb8());
        }
        rows.push(row);
    }
    closing.store(true, Ordering::SeqCst);
    let _ = client.disconnect();
    let mut titles: Vec<&str> = info.modalities.iter().map(|m| m.name.as_str()).collect();
    titles.extend(variants.iter().map(|v| v.0.as_str()));
    let sheet = contact_sheet(&titles, &rows, 3);
    let sheet_path = opts.out.join("sheet.png");
    sheet.save(&sheet_path).with_context(|| format!("writing {}", sheet_path.display()))?;
    println!("wrote {} images and {}", latencies.len(), sheet_path.display());
    Ok(latencies)
}

/// The sheet's columns after the input maps: the base alone (every map, strength 0), the MCM with
/// each modality alone, and with all of them (label, modalities, strength).
fn demo_variants(info: &ModelInfo, strength: f32) -> Vec<(String, Vec<String>, f32)> {
    let all: Vec<String> = info.modalities.iter().map(|m| m.name.clone()).collect();
    let mut variants = vec![("base only".to_string(), all.clone(), 0.0)];
    variants.extend(all.iter().map(|m| (format!("MCM: {m}"), vec![m.clone()], strength)));
    if all.len() > 1 {
        variants.push((if all.len() == 2 { "MCM: both" } else { "MCM: all" }.to_string(), all, strength));
    }
    variants
}

/// The modality folders of the samples directory (`segmentation/`, `sketch/`, `depth/`, ...).
fn sample_modalities(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

fn wait_for(answers: &mpsc::Receiver<(String, Answer)>, id: &str) -> Result<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match answers.recv_timeout(left) {
            Ok((got, Answer::Image(png))) if got == id => return Ok(png),
            Ok((got, Answer::Error(e))) if got == id => bail!("request {id}: {e}"),
            Ok(_) => continue,
            Err(_) => bail!("request {id}: no answer within 300 s"),
        }
    }
}

/// Sample pairs: for each `segmentation/NAME.png`, every modality folder's `NAME.png`.
fn load_samples(dir: &Path) -> Result<Vec<Sample>> {
    let seg = dir.join("segmentation");
    let mut names: Vec<String> = std::fs::read_dir(&seg)
        .with_context(|| format!("reading {}", seg.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("{}: no sample PNGs", seg.display());
    }
    names
        .into_iter()
        .map(|file| {
            let mut frames = BTreeMap::new();
            for modality in sample_modalities(dir)? {
                let p = dir.join(&modality).join(&file);
                if p.exists() {
                    frames.insert(modality.to_string(), std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
                }
            }
            Ok((file.trim_end_matches(".png").to_string(), frames))
        })
        .collect()
}
