//! Soak test of the device service against a real broker (README "MQTT interface").
//!
//! Starts mosquitto on a free port and the release binary `mcm-edge run` on a small model, then
//! streams a few thousand frames (`P/frame/<modality>`: the tablet samples, plus garbage bytes,
//! truncated PNGs, a sketch on the segmentation topic and an unknown modality topic) and about a
//! thousand requests (`P/request`: valid ones with one or both modalities and invalid ones of
//! every kind, in paced runs and occasional bursts that overrun the queue), counts the answers on
//! `P/image/+` and `P/error` per request id and samples the service's resident memory from
//! `/proc/<pid>/status`. Prints a table and writes a JSON report; exits non-zero when a request
//! went unanswered or was answered twice, an answer was not the expected one, the service's
//! memory grew by more than `--max-rss-growth-pct` between the warm-up sample and the end, or the
//! service did not stop cleanly on SIGTERM.
//!
//! `scripts/soak.sh` builds the binary and this example and runs it; by hand:
//! `cargo build --release --bin mcm-edge --example soak && target/release/examples/soak --json docs/soak.json`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::Parser;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(about = "Soak test: mosquitto + mcm-edge run + thousands of frames and requests; RSS over time")]
struct Args {
    /// Stream frames to send (P/frame/<modality>).
    #[arg(long, default_value_t = 3000)]
    frames: usize,
    /// Requests to send (P/request).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Pause between two published messages, in milliseconds (bursts excepted).
    #[arg(long, default_value_t = 40)]
    interval_ms: u64,
    /// Every this many requests, a burst of `--burst` valid requests sent back to back.
    #[arg(long, default_value_t = 100)]
    burst_every: usize,
    /// Requests in a burst (more than the queue depth, to exercise `queue_full`).
    #[arg(long, default_value_t = 12)]
    burst: usize,
    /// `steps` of the burst requests (slow enough that a burst overruns the queue).
    #[arg(long, default_value_t = 100)]
    burst_steps: usize,
    /// The device binary.
    #[arg(long, default_value = "target/release/mcm-edge")]
    binary: PathBuf,
    /// The broker binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    /// Model directory given to the service (`[model] dir`).
    #[arg(long, default_value = "models/tiny")]
    model: PathBuf,
    /// Folder with `segmentation/tablet-*.png` and `sketch/tablet-*.png`.
    #[arg(long, default_value = "config/samples")]
    samples: PathBuf,
    /// `[generation] steps` of the service and `steps` of the requests.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// `[limits] queue_depth` of the service.
    #[arg(long, default_value_t = 8)]
    queue_depth: usize,
    /// Largest allowed growth of the service's RSS from the warm-up sample to the end, in percent.
    #[arg(long, default_value_t = 20.0)]
    max_rss_growth_pct: f64,
    /// Seconds to wait for the last answers once everything is sent.
    #[arg(long, default_value_t = 60)]
    answer_timeout_s: u64,
    /// Folder for the generated configs and the broker / service logs.
    #[arg(long, default_value = "target/soak")]
    work_dir: PathBuf,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the message order and of the request seeds.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

const DEVICE_ID: &str = "soak";
const PREFIX: &str = "mcm/soak/";


/// A child process that is killed (SIGKILL) and reaped if still running when dropped.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Guard {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    fn terminate(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().context("kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {} ({}) failed", self.pid(), self.name);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident set size and its high-water mark of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn start_broker(args: &Args, port: u16) -> Result<Guard> {
    let conf = args.work_dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmessage_size_limit 16777216\n\
             max_queued_messages 10000\nlog_dest stderr\nlog_type error\nlog_type warning\n"
        ),
    )?;
    let log = File::create(args.work_dir.join("mosquitto.log"))?;
    let child = Command::new(&args.mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.mosquitto.display()))?;
    let guard = Guard { name: "mosquitto", child };
    wait_for_port(port, Duration::from_secs(10))?;
    Ok(guard)
}

fn start_device(args: &Args, port: u16) -> Result<Guard> {
    let conf = args.work_dir.join("edge.toml");
    std::fs::write(
        &conf,
        format!(
            "[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\ndevice_id = \"{DEVICE_ID}\"\nclean_session = true\n\n\
             [model]\ndir = {:?}\n\n[generation]\nsteps = {}\nseed_policy = \"counter\"\n\n\
             [limits]\nqueue_depth = {}\n",
            args.model.display().to_string(),
            args.steps,
            args.queue_depth
        ),
    )?;
    let log = File::create(args.work_dir.join("mcm-edge.log"))?;
    let child = Command::new(&args.binary)
        .arg("run")
        .arg("--config")
        .arg(&conf)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!("starting {} (build it: cargo build --release --bin mcm-edge)", args.binary.display())
        })?;
    Ok(Guard { name: "mcm-edge", child })
}

/// What one published message should produce.
#[derive(Debug, Clone)]
enum Expect {
    /// A request with this id: an image, or `queue_full` when the queue was full.
    Image,
    /// A request with this id: an error with this code.
    Error(&'static str),
    /// A request without a usable id: an error with id null and this code.
    NullError(&'static str),
}

enum Message {
    Frame { kind: &'static str, topic: String, payload: Vec<u8> },
    Request { kind: &'static str, id: Option<String>, payload: Vec<u8>, expect: Expect },
}

struct Samples {
    segmentation: Vec<Vec<u8>>,
    sketch: Vec<Vec<u8>>,
}

fn load_samples(dir: &Path) -> Result<Samples> {
    let read = |modality: &str| -> Result<Vec<Vec<u8>>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join(modality))
            .with_context(|| format!("{}/{modality}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("tablet-") && n.ends_with(".png"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no tablet-*.png in {}/{modality}", dir.display());
        }
        files.iter().map(|p| std::fs::read(p).with_context(|| p.display().to_string())).collect()
    };
    Ok(Samples { segmentation: read("segmentation")?, sketch: read("sketch")? })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn garbage(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn frame_message(rng: &mut ChaCha8Rng, s: &Samples) -> Message {
    let pick = |v: &Vec<Vec<u8>>, rng: &mut ChaCha8Rng| v[rng.random_range(0..v.len())].clone();
    let (kind, topic, payload) = match rng.random_range(0..100) {
        0..=41 => ("segmentation", "frame/segmentation", pick(&s.segmentation, rng)),
        42..=83 => ("sketch", "frame/sketch", pick(&s.sketch, rng)),
        84..=87 => ("garbage_bytes", "frame/segmentation", {
            let n = 1 + rng.random_range(0..2000);
            garbage(rng, n)
        }),
        88..=91 => ("truncated_png", "frame/sketch", {
            let png = pick(&s.sketch, rng);
            let n = 1 + rng.random_range(0..png.len() - 1);
            png[..n].to_vec()
        }),
        92..=95 => ("sketch_on_segmentation_topic", "frame/segmentation", pick(&s.sketch, rng)),
        _ => ("unknown_modality_topic", "frame/depth", pick(&s.segmentation, rng)),
    };
    Message::Frame { kind, topic: format!("{PREFIX}{topic}"), payload }
}

fn valid_request(rng: &mut ChaCha8Rng, s: &Samples, n: usize, steps: usize, burst: bool) -> Message {
    let seg = b64(&s.segmentation[rng.random_range(0..s.segmentation.len())]);
    let sketch = b64(&s.sketch[rng.random_range(0..s.sketch.len())]);
    let (kind, frames) = match rng.random_range(0..3) {
        0 => ("segmentation", json!({ "segmentation": seg })),
        1 => ("sketch", json!({ "sketch": sketch })),
        _ => ("both", json!({ "segmentation": seg, "sketch": sketch })),
    };
    let id = format!("soak-{n}");
    let body = json!({ "id": id, "frames": frames, "steps": steps, "seed": rng.next_u64() % 1000 });
    let kind = if burst { "burst" } else { kind };
    Message::Request { kind, id: Some(id), payload: body.to_string().into_bytes(), expect: Expect::Image }
}

fn invalid_request(rng: &mut ChaCha8Rng, s: &Samples, n: usize, steps: usize) -> Message {
    let id = format!("soak-{n}");
    let seg = || b64(&s.segmentation[0]);
    let with_id = |kind: &'static str, body: Value, code: &'static str| Message::Request {
        kind,
        id: Some(body["id"].as_str().unwrap_or_default().to_string()),
        payload: body.to_string().into_bytes(),
        expect: Expect::Error(code),
    };
    match rng.random_range(0..11) {
        0 => {
            let text = json!({ "id": id, "frames": { "segmentation": seg() } }).to_string();
            let cut = 1 + rng.random_range(0..text.len() - 1);
            Message::Request {
                kind: "truncated_json",
                id: None,
                payload: text.as_bytes()[..cut].to_vec(),
                expect: Expect::NullError("invalid_json"),
            }
        }
        1 => Message::Request {
            kind: "json_array",
            id: None,
            payload: json!([id, 1, 2]).to_string().into_bytes(),
            expect: Expect::NullError("invalid_request"),
        },
        2 => with_id("unknown_modality", json!({ "id": id, "frames": { "depth": seg() } }), "unknown_modality"),
        3 => with_id(
            "invalid_base64",
            json!({ "id": id, "frames": { "segmentation": "not base64 !!!" } }),
            "invalid_base64",
        ),
        4 => with_id(
            "garbage_frame",
            json!({ "id": id, "frames": { "sketch": b64(&garbage(rng, 500)) } }),
            "not_an_image",
        ),
        5 => {
            let png = &s.segmentation[0];
            with_id(
                "truncated_png",
                json!({ "id": id, "frames": { "segmentation": b64(&png[..png.len() / 2]) } }),
                "corrupt_image",
            )
        }
        6 => with_id("steps_0", json!({ "id": id, "frames": { "segmentation": seg() }, "steps": 0 }), "invalid_steps"),
        7 => with_id(
            "strength_99",
            json!({ "id": id, "frames": { "segmentation": seg() }, "strength": 99.0, "steps": steps }),
            "invalid_strength",
        ),
        8 => with_id(
            "unknown_key",
            json!({ "id": id, "frames": { "segmentation": seg() }, "colour": "red" }),
            "invalid_request",
        ),
        9 => with_id("no_frames", json!({ "id": id, "frames": {} }), "no_frames"),
        _ => with_id(
            "id_with_slash",
            json!({ "id": format!("soak/{n}"), "frames": { "segmentation": seg() } }),
            "invalid_id",
        ),
    }
}

/// The whole message sequence: frames and requests interleaved at random, with bursts of valid
/// requests; `true` marks a message sent without a pause before the next one.
fn schedule(args: &Args, samples: &Samples) -> Vec<(Message, bool)> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let (mut frames, mut requests) = (0usize, 0usize);
    let mut out = Vec::with_capacity(args.frames + args.requests);
    while frames < args.frames || requests < args.requests {
        let left_frames = args.frames - frames;
        let left_requests = args.requests - requests;
        let request = rng.random_range(0..left_frames + left_requests) < left_requests;
        if !request {
            out.push((frame_message(&mut rng, samples), false));
            frames += 1;
            continue;
        }
        if args.burst_every > 0 && requests > 0 && requests % args.burst_every == 0 && left_requests > args.burst {
            for _ in 0..args.burst {
                out.push((valid_request(&mut rng, samples, requests, args.burst_steps, true), true));
                requests += 1;
            }
            continue;
        }
        let msg = if rng.random_range(0..100) < 85 {
            valid_request(&mut rng, samples, requests, args.steps, false)
        } else {
            invalid_request(&mut rng, samples, requests, args.steps)
        };
        out.push((msg, false));
        requests += 1;
    }
    out
}

/// Everything received from the service.
#[derive(Default)]
struct Received {
    /// Answers per request id: image or error code.
    by_id: HashMap<String, Vec<Answer>>,
    /// Errors with id null, by code.
    null_errors: BTreeMap<String, u64>,
    stream_images: u64,
    bad_images: u64,
    status: Option<Value>,
    connections: u64,
    connection_errors: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Image,
    Error(String),
}

fn lock(m: &Mutex<Received>) -> MutexGuard<'_, Received> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `bytes` is a PNG the decoder reads (the model's image).
fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n") && image::load_from_memory(bytes).is_ok()
}

fn on_publish(received: &Mutex<Received>, topic: &str, payload: &[u8]) {
    let Some(rest) = topic.strip_prefix(PREFIX) else { return };
    let mut r = lock(received);
    if let Some(id) = rest.strip_prefix("image/") {
        if !is_png(payload) {
            r.bad_images += 1;
        }
        r.by_id.entry(id.to_string()).or_default().push(Answer::Image);
    } else if rest == "image" {
        if !is_png(payload) {
            r.bad_images += 1;
        }
        r.stream_images += 1;
    } else if rest == "error" {
        let v: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let code = v["code"].as_str().unwrap_or("<no code>").to_string();
        match v["id"].as_str() {
            Some(id) => r.by_id.entry(id.to_string()).or_default().push(Answer::Error(code)),
            None => *r.null_errors.entry(code).or_default() += 1,
        }
    } else if rest == "status" {
        r.status = serde_json::from_slice(payload).ok();
    }
}

/// A sample of the service's memory.
struct RssSample {
    t: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let code = run(&args)?;
    std::process::exit(code);
}

fn run(args: &Args) -> Result<i32> {
    std::fs::create_dir_all(&args.work_dir)?;
    let samples = load_samples(&args.samples)?;
    let messages = schedule(args, &samples);

    let port = free_port()?;
    let _broker = start_broker(args, port)?;

    // Subscribe before the service starts, so that nothing it says is missed.
    let mut options = MqttOptions::new(format!("mcm-soak-{}", std::process::id()), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30)).set_max_packet_size(16 << 20, 16 << 20).set_clean_session(true);
    let (client, mut connection) = Client::new(options, 256);
    let received = Arc::new(Mutex::new(Received::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let received = Arc::clone(&received);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => on_publish(&received, &p.topic, &p.payload),
                    Ok(Event::Incoming(Packet::ConnAck(_))) => lock(&received).connections += 1,
                    Ok(_) => {}
                    Err(e) => {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        eprintln!("soak: client connection error: {e}");
                        lock(&received).connection_errors += 1;
                        thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
    };
    for filter in ["image", "image/+", "error", "status"] {
        client.subscribe(format!("{PREFIX}{filter}"), QoS::AtLeastOnce)?;
    }

    let start = Instant::now();
    let mut device = start_device(args, port)?;
    let pid = device.pid();
    // Ready when the retained status says it is online.
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = lock(&received).status.as_ref().and_then(|s| s["state"].as_str().map(str::to_string));
        if matches!(state.as_deref(), Some(s) if s != "offline") {
            break;
        }
        if let Ok(Some(status)) = device.child.try_wait() {
            bail!(
                "mcm-edge exited with {status} before going online; see {}",
                args.work_dir.join("mcm-edge.log").display()
            );
        }
        if Instant::now() > ready_deadline {
            bail!("mcm-edge not online after 60 s; see {}", args.work_dir.join("mcm-edge.log").display());
        }
        thread::sleep(Duration::from_millis(50));
    }
    let startup_s = start.elapsed().as_secs_f64();
    let after_start = rss_kib(pid).context("reading /proc/<pid>/status")?;
    eprintln!(
        "soak: mcm-edge (pid {pid}) online after {startup_s:.1} s, RSS {} MiB; sending {} messages",
        mib(after_start.0),
        messages.len()
    );

    // Memory sampler: once a second until stopped.
    let series: Arc<Mutex<Vec<RssSample>>> = Arc::default();
    let sampler = {
        let series = Arc::clone(&series);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((rss_kib, hwm_kib)) = rss_kib(pid) {
                    series.lock().unwrap_or_else(|e| e.into_inner()).push(RssSample {
                        t: start.elapsed().as_secs_f64(),
                        rss_kib,
                        hwm_kib,
                    });
                }
                thread::sleep(Duration::from_secs(1));
            }
        })
    };

    // Send, pacing requests so that the queue is not always full.
    let interval = Duration::from_millis(args.interval_ms);
    let warmup_at = messages.len() / 10;
    let mut warmup: Option<(u64, u64, f64)> = None;
    let mut expected: Vec<(String, Expect, &'static str)> = Vec::new();
    let mut null_expected: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut frames_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut requests_by_kind: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut frames_sent, mut requests_sent) = (0u64, 0u64);
    let outstanding = |expected: &[(String, Expect, &'static str)]| -> usize {
        let r = lock(&received);
        expected.iter().rev().take(4 * args.queue_depth).filter(|(id, _, _)| !r.by_id.contains_key(id)).count()
    };
    for (i, (message, burst)) in messages.into_iter().enumerate() {
        if i == warmup_at {
            thread::sleep(Duration::from_secs(1));
            if let Some((rss, hwm)) = rss_kib(pid) {
                warmup = Some((rss, hwm, start.elapsed().as_secs_f64()));
            }
        }
        match message {
            Message::Frame { kind, topic, payload } => {
                client.publish(topic, QoS::AtLeastOnce, false, payload)?;
                *frames_by_kind.entry(kind).or_default() += 1;
                frames_sent += 1;
                if kind == "unknown_modality_topic" {
                    *null_expected.entry("unknown_modality").or_default() += 1;
                }
            }
            Message::Request { kind, id, payload, expect } => {
                if !burst {
                    // Keep fewer requests in flight than the queue holds (bursts overrun it).
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while outstanding(&expected) + 2 > args.queue_depth && Instant::now() < deadline {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                client.publish(format!("{PREFIX}request"), QoS::AtLeastOnce, false, payload)?;
                *requests_by_kind.entry(kind).or_default() += 1;
                requests_sent += 1;
                match (id, expect) {
                    (Some(id), expect) => expected.push((id, expect, kind)),
                    (None, Expect::NullError(code)) => *null_expected.entry(code).or_default() += 1,
                    (None, _) => {}
                }
            }
        }
        if !burst {
            thread::sleep(interval);
        }
    }
    let sent_s = start.elapsed().as_secs_f64();

    // Wait for the answers.
    let deadline = Instant::now() + Duration::from_secs(args.answer_timeout_s);
    loop {
        let missing = {
            let r = lock(&received);
            let nulls_done = null_expected.iter().all(|(code, n)| r.null_errors.get(*code).copied().unwrap_or(0) >= *n);
            expected.iter().filter(|(id, _, _)| !r.by_id.contains_key(id)).count() + usize::from(!nulls_done)
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Late duplicates and the last status.
    thread::sleep(Duration::from_secs(2));
    let end = rss_kib(pid).context("reading /proc/<pid>/status at the end")?;
    let end_t = start.elapsed().as_secs_f64();
    let mut status_before_stop = lock(&received).status.clone();
    if let Some(Value::Object(status)) = &mut status_before_stop {
        status.remove("modalities");
    }

    // Clean shutdown on SIGTERM: exit status 0 and the retained status "offline".
    let exit = device.terminate(Duration::from_secs(15))?;
    thread::sleep(Duration::from_millis(300));
    let final_status = lock(&received).status.clone();
    stop.store(true, Ordering::Relaxed);
    let _ = client.disconnect();
    let _ = sampler.join();
    let _ = receiver.join();
    let duration_s = start.elapsed().as_secs_f64();

    // Tally.
    let r = lock(&received);
    let mut images = 0u64;
    let mut errors_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let (mut unanswered, mut answered_twice, mut unexpected) = (0u64, 0u64, 0u64);
    let mut unexpected_examples: Vec<String> = Vec::new();
    for (id, expect, kind) in &expected {
        let answers = r.by_id.get(id).map(Vec::as_slice).unwrap_or(&[]);
        match answers.len() {
            0 => unanswered += 1,
            1 => {}
            _ => answered_twice += 1,
        }
        for a in answers {
            match a {
                Answer::Image => images += 1,
                Answer::Error(code) => *errors_by_code.entry(code.clone()).or_default() += 1,
            }
        }
        let ok = match (expect, answers.first()) {
            (_, None) => true, // counted as unanswered
            (Expect::Image, Some(Answer::Image)) => true,
            (Expect::Image, Some(Answer::Error(c))) => c == "queue_full",
            (Expect::Error(code), Some(Answer::Error(c))) => c == code,
            _ => false,
        };
        if !ok {
            unexpected += 1;
            if unexpected_examples.len() < 10 {
                unexpected_examples.push(format!("{id} ({kind}): expected {expect:?}, got {answers:?}"));
            }
        }
    }
    let answers_total: u64 = r.by_id.values().map(|v| v.len() as u64).sum();
    let unknown_ids = r.by_id.keys().filter(|id| !expected.iter().any(|(e, _, _)| e == *id)).count();
    let mut null_missing: BTreeMap<&str, u64> = BTreeMap::new();
    for (code, n) in &null_expected {
        let got = r.null_errors.get(*code).copied().unwrap_or(0);
        if got < *n {
            null_missing.insert(code, n - got);
        }
    }

    let series = series.lock().unwrap_or_else(|e| e.into_inner());
    let (warm_rss, _, warm_t) = warmup.unwrap_or((after_start.0, after_start.1, startup_s));
    let max_after_warmup = series.iter().filter(|s| s.t >= warm_t).map(|s| s.rss_kib).max().unwrap_or(end.0).max(end.0);
    let peak_hwm = series.iter().map(|s| s.hwm_kib).max().unwrap_or(0).max(end.1);
    let growth_pct = (end.0 as f64 - warm_rss as f64) / warm_rss as f64 * 100.0;
    let step = (series.len() / 60).max(1);
    let rss_series: Vec<Value> =
        series.iter().step_by(step).map(|s| json!([(s.t * 10.0).round() / 10.0, mib(s.rss_kib)])).collect();

    let mut failures: Vec<String> = Vec::new();
    if unanswered > 0 {
        failures.push(format!("{unanswered} requests unanswered"));
    }
    if answered_twice > 0 {
        failures.push(format!("{answered_twice} requests answered more than once"));
    }
    if unexpected > 0 {
        failures.push(format!("{unexpected} unexpected answers: {unexpected_examples:?}"));
    }
    if unknown_ids > 0 {
        failures.push(format!("{unknown_ids} answers for ids never sent"));
    }
    if !null_missing.is_empty() {
        failures.push(format!("errors with id null missing: {null_missing:?}"));
    }
    if r.bad_images > 0 {
        failures.push(format!("{} images are not readable PNGs", r.bad_images));
    }
    if growth_pct > args.max_rss_growth_pct {
        failures.push(format!("RSS grew by {growth_pct:.1} % (limit {} %)", args.max_rss_growth_pct));
    }
    match exit {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("mcm-edge exited with {s} on SIGTERM")),
        None => failures.push("mcm-edge did not exit within 15 s of SIGTERM".into()),
    }
    if final_status.as_ref().and_then(|s| s["state"].as_str()) != Some("offline") {
        failures.push(format!("last status is not offline: {final_status:?}"));
    }
    if r.connection_errors > 0 || r.connections != 1 {
        failures.push(format!("soak client: {} connections, {} connection errors", r.connections, r.connection_errors));
    }

    let report = json!({
        "passed": failures.is_empty(),
        "failures": failures,
        "setup": {
            "broker": "mosquitto (127.0.0.1, MQTT 3.1.1, QoS 1)",
            "model": args.model.display().to_string(),
            "steps": args.steps,
            "queue_depth": args.queue_depth,
            "interval_ms": args.interval_ms,
            "burst": format!(
                "{} valid requests of {} steps back to back every {} requests",
                args.burst, args.burst_steps, args.burst_every
            ),
            "seed": args.seed,
        },
        "frames_sent": frames_sent,
        "frames_by_kind": frames_by_kind,
        "requests_sent": requests_sent,
        "requests_by_kind": requests_by_kind,
        "requests_with_id": expected.len(),
        "answers": {
            "total": answers_total,
            "images": images,
            "errors": answers_total - images,
            "errors_by_code": errors_by_code,
        },
        "requests_unanswered": unanswered,
        "requests_answered_twice": answered_twice,
        "unexpected_answers": unexpected,
        "stream_images": r.stream_images,
        "errors_with_null_id": {"received": r.null_errors, "expected_at_least": null_expected},
        "device_status_at_end": status_before_stop,
        "rss_mib": {
            "after_startup": mib(after_start.0),
            "warmup": mib(warm_rss),
            "warmup_at_s": (warm_t * 10.0).round() / 10.0,
            "end": mib(end.0),
            "max_sampled_after_warmup": mib(max_after_warmup),
            "peak_vmhwm": mib(peak_hwm),
            "growth_warmup_to_end_pct": (growth_pct * 10.0).round() / 10.0,
            "max_growth_pct": args.max_rss_growth_pct,
            "series_s_mib": rss_series,
        },
        "startup_s": (startup_s * 10.0).round() / 10.0,
        "sending_s": ((sent_s - startup_s) * 10.0).round() / 10.0,
        "end_sample_at_s": (end_t * 10.0).round() / 10.0,
        "duration_s": (duration_s * 10.0).round() / 10.0,
        "device_exit": exit.map(|s| s.to_string()),
    });

    println!("soak: {}", if failures.is_empty() { "PASSED" } else { "FAILED" });
    println!("  {:<34} {}", "frames sent", frames_sent);
    println!("  {:<34} {} ({} with an id)", "requests sent", requests_sent, expected.len());
    println!("  {:<34} {} images, {} errors", "answers to requests", images, answers_total - images);
    println!("  {:<34} {}", "errors by code", report["answers"]["errors_by_code"]);
    println!("  {:<34} {}", "requests unanswered", unanswered);
    println!("  {:<34} {}", "requests answered twice", answered_twice);
    println!("  {:<34} {}", "unexpected answers", unexpected);
    println!("  {:<34} {}", "stream images", r.stream_images);
    println!("  {:<34} {}", "errors with id null", json!(r.null_errors));
    println!(
        "  {:<34} start {} / warm-up {} / end {} / peak (VmHWM) {}; growth {:.1} %",
        "RSS MiB",
        mib(after_start.0),
        mib(warm_rss),
        mib(end.0),
        mib(peak_hwm),
        growth_pct
    );
    println!("  {:<34} {:.1} s", "duration", duration_s);
    for f in report["failures"].as_array().into_iter().flatten() {
        println!("  FAILURE: {}", f.as_str().unwrap_or_default());
    }
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = File::create(path).with_context(|| path.display().to_string())?;
        writeln!(f, "{}", serde_json::to_string_pretty(&report)?)?;
        println!("  report: {}", path.display());
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}
