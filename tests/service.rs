//! End to end: the MQTT service with a fake generator against the in-process broker (and
//! against mosquitto when it is installed).

use std::io::Cursor;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use image::{ImageFormat, Rgb, RgbImage};
use mcm_edge::broker::{self, RunningBroker};
use mcm_edge::cond::{ModalityMap, Maps};
use mcm_edge::config::{EdgeConfig, MqttProtocol};
use mcm_edge::model_info::ModelInfo;
use mcm_edge::pipeline::{GenerateError, GenerationParams, ImageGenerator};
use mcm_edge::service::{self, ServiceError, ServiceSummary};
use serde_json::{Value, json};

const SIZE: usize = 32;
const WAIT: Duration = Duration::from_secs(20);
const PALETTE: [[u8; 3]; 4] = [[120, 180, 255], [40, 160, 60], [30, 60, 200], [128, 128, 128]];
const NO_SEGMENTATION: [u8; 3] = [200, 200, 200];

const MODEL_TOML: &str = r#"
format = 1
[image]
size = 32
channels = 3
value_range = [-1.0, 1.0]
[schedule]
beta_schedule = "linear"
beta_start = 0.0001
beta_end = 0.02
num_train_timesteps = 1000
prediction_type = "epsilon"
[base]
file = "base.onnx"
[mcm]
file = "mcm.onnx"
cond_channels = 7
[[modalities]]
name = "segmentation"
kind = "segmentation"
channels = 4
classes = [
  { name = "sky", color = [120, 180, 255] },
  { name = "grass", color = [40, 160, 60] },
  { name = "water", color = [30, 60, 200] },
  { name = "rock", color = [128, 128, 128] },
]
[[modalities]]
name = "sketch"
kind = "sketch"
channels = 1
"#;

// ------------------------------------------------------------------------------------------
// Fake generator: paints the class colours, strokes in black.

struct FakeGenerator {
    info: ModelInfo,
    delay: Duration,
    calls: AtomicUsize,
}

impl FakeGenerator {
    fn new(delay: Duration) -> Arc<Self> {
        let info: ModelInfo = toml::from_str(MODEL_TOML).expect("model toml");
        Arc::new(FakeGenerator { info, delay, calls: AtomicUsize::new(0) })
    }
}

impl ImageGenerator for FakeGenerator {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn generate(&self, maps: &Maps, params: &GenerationParams) -> Result<RgbImage, GenerateError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if params.steps == 0 {
            return Err(GenerateError::Param("steps must be positive".into()));
        }
        std::thread::sleep(self.delay);
        let seg = match maps.get("segmentation") {
            Some(ModalityMap::Segmentation(ids)) => Some(ids),
            _ => None,
        };
        let sketch = match maps.get("sketch") {
            Some(ModalityMap::Sketch(s)) => Some(s),
            _ => None,
        };
        Ok(RgbImage::from_fn(SIZE as u32, SIZE as u32, |x, y| {
            let (x, y) = (x as usize, y as usize);
            if sketch.is_some_and(|s| s[[y, x]] > 0.5) {
                return Rgb([0, 0, 0]);
            }
            Rgb(seg.map_or(NO_SEGMENTATION, |ids| PALETTE[ids[[y, x]] as usize]))
        }))
    }
}

// ------------------------------------------------------------------------------------------
// Frames.

fn png(img: &RgbImage) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// 64x64 segmentation: left half grass (class 1), right half water (class 2).
fn seg_png() -> Vec<u8> {
    png(&RgbImage::from_fn(64, 64, |x, _| Rgb(if x < 32 { PALETTE[1] } else { PALETTE[2] })))
}

/// 256x256 segmentation of pseudo-random classes: a PNG far above rumqttc's 10 KiB default.
fn big_seg_png() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let img = RgbImage::from_fn(256, 256, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Rgb(PALETTE[(state % 4) as usize])
    });
    let bytes = png(&img);
    assert!(bytes.len() > 10 * 1024, "test frame is only {} bytes", bytes.len());
    bytes
}

/// 64x64 sketch: white with a black vertical bar at x in 28..36.
fn sketch_png() -> Vec<u8> {
    png(&RgbImage::from_fn(64, 64, |x, _| if (28..36).contains(&x) { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) }))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_png(bytes: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(bytes, ImageFormat::Png).expect("a PNG").to_rgb8()
}

// ------------------------------------------------------------------------------------------
// Brokers.

fn rumqttd() -> RunningBroker {
    static BROKER: OnceLock<RunningBroker> = OnceLock::new();
    *BROKER.get_or_init(|| broker::start_local().expect("in-process broker"))
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// A mosquitto started by the test; killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

fn start_mosquitto() -> Option<Mosquitto> {
    let bin = find_mosquitto()?;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("mcm-edge-mosquitto-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")).unwrap();
    let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let m = Mosquitto { child, port, _dir: dir };
    let start = Instant::now();
    while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(m)
}

/// A TCP proxy in front of a broker whose connections the test can cut, to make the broker see
/// an abrupt disconnect (last will) and the service reconnect.
struct Proxy {
    port: u16,
    conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let list = Arc::clone(&conns);
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else { continue };
                let mut l = list.lock().unwrap();
                l.push(down.try_clone().unwrap());
                l.push(up.try_clone().unwrap());
                for (mut from, mut to) in [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, conns }
    }

    /// Close every proxied connection at once (no MQTT DISCONNECT).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Test client (MQTT 3.1.1 or 5), receiving everything under a filter.

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    correlation: Option<Vec<u8>>,
    content_type: Option<String>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.topic))
    }
}

enum Ev {
    SubAck,
    Msg(Msg),
}

#[derive(Clone)]
enum TcClient {
    V4(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

/// Forward a connection's events to the test thread until it hangs up; connection errors are
/// retried after a pause (the event loop reconnects by itself).
fn pump<E, Er>(events: impl Iterator<Item = Result<E, Er>>, tx: &mpsc::Sender<Ev>, to_ev: impl Fn(E) -> Option<Ev>) {
    for ev in events {
        match ev {
            Ok(ev) => {
                if let Some(ev) = to_ev(ev)
                    && tx.send(ev).is_err()
                {
                    break;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct TestClient {
    client: TcClient,
    rx: Receiver<Ev>,
    seen: Vec<Msg>,
}

static CLIENT_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestClient {
    fn connect(port: u16, protocol: MqttProtocol) -> TestClient {
        let id = format!("test-{}-{}", std::process::id(), CLIENT_COUNTER.fetch_add(1, Ordering::SeqCst));
        let (tx, rx) = mpsc::channel();
        let client = match protocol {
            MqttProtocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                o.set_max_packet_size(64 << 20, 64 << 20).set_keep_alive(Duration::from_secs(5));
                let (client, mut conn) = rumqttc::Client::new(o, 100);
                std::thread::spawn(move || {
                    use rumqttc::{Event, Packet};
                    pump(conn.iter(), &tx, |ev| match ev {
                        Event::Incoming(Packet::Publish(p)) => Some(Ev::Msg(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            correlation: None,
                            content_type: None,
                        })),
                        Event::Incoming(Packet::SubAck(_)) => Some(Ev::SubAck),
                        _ => None,
                    })
                });
                TcClient::V4(client)
            }
            MqttProtocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
                o.set_max_packet_size(Some(64 << 20)).set_keep_alive(Duration::from_secs(5));
                let (client, mut conn) = rumqttc::v5::Client::new(o, 100);
                std::thread::spawn(move || {
                    use rumqttc::v5::Event;
                    use rumqttc::v5::mqttbytes::v5::Packet;
                    pump(conn.iter(), &tx, |ev| match ev {
                        Event::Incoming(Packet::Publish(p)) => Some(Ev::Msg(Msg {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            correlation: p.properties.as_ref().and_then(|pr| pr.correlation_data.as_ref().map(|c| c.to_vec())),
                            content_type: p.properties.as_ref().and_then(|pr| pr.content_type.clone()),
                        })),
                        Event::Incoming(Packet::SubAck(_)) => Some(Ev::SubAck),
                        _ => None,
                    })
                });
                TcClient::V5(client)
            }
        };
        TestClient { client, rx, seen: Vec::new() }
    }

    /// Subscribe (QoS 1) and wait for the SUBACK.
    fn subscribe(&mut self, filter: &str) {
        match &self.client {
            TcClient::V4(c) => c.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap(),
            TcClient::V5(c) => c.subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).unwrap(),
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ev::SubAck) => return,
                Ok(Ev::Msg(m)) => self.seen.push(m),
                Err(e) => panic!("no SUBACK for {filter}: {e:?}"),
            }
        }
    }

    fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload = payload.into();
        match &self.client {
            TcClient::V4(c) => c.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload).unwrap(),
            TcClient::V5(c) => c.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload).unwrap(),
        }
    }

    /// MQTT 5 publish with a response topic and correlation data.
    fn publish_v5_request(&self, topic: &str, payload: Vec<u8>, response_topic: &str, correlation: &[u8]) {
        let TcClient::V5(c) = &self.client else { panic!("not an MQTT 5 client") };
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(response_topic.to_string()),
            correlation_data: Some(correlation.to_vec().into()),
            ..Default::default()
        };
        c.publish_with_properties(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload, props).unwrap();
    }

    /// The first message (seen or arriving within [`WAIT`]) matching `pred`; it is consumed.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        self.try_wait_for(WAIT, &pred).unwrap_or_else(|| {
            let topics: Vec<&str> = self.seen.iter().map(|m| m.topic.as_str()).collect();
            panic!("timed out waiting for {what}; unmatched messages on {topics:?}")
        })
    }

    fn try_wait_for(&mut self, wait: Duration, pred: &impl Fn(&Msg) -> bool) -> Option<Msg> {
        if let Some(i) = self.seen.iter().position(pred) {
            return Some(self.seen.remove(i));
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ev::Msg(m)) if pred(&m) => return Some(m),
                Ok(Ev::Msg(m)) => self.seen.push(m),
                Ok(Ev::SubAck) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every message arriving within `wait` (plus the unconsumed ones).
    fn drain(&mut self, wait: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        while let Ok(ev) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Ev::Msg(m) = ev {
                self.seen.push(m);
            }
        }
        std::mem::take(&mut self.seen)
    }
}

// ------------------------------------------------------------------------------------------
// The service under test.

struct Svc {
    prefix: String,
    shutdown: Arc<AtomicBool>,
    handle: JoinHandle<Result<ServiceSummary, ServiceError>>,
    generator: Arc<FakeGenerator>,
}

impl Svc {
    fn stop(self) -> ServiceSummary {
        self.shutdown.store(true, Ordering::SeqCst);
        self.handle.join().expect("service thread").expect("service result")
    }
}

static DEVICE_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn test_config(port: u16, protocol: MqttProtocol) -> EdgeConfig {
    let mut config = EdgeConfig::default();
    config.mqtt.port = port;
    config.mqtt.protocol = protocol;
    config.mqtt.device_id = format!("dev{}-{}", std::process::id(), DEVICE_COUNTER.fetch_add(1, Ordering::SeqCst));
    config.mqtt.reconnect_delay_ms = 100;
    config.generation.steps = 4;
    config
}

/// Start the service and a test client subscribed to `P/#`; returns once the service said online.
fn start(config: EdgeConfig, delay: Duration, client_protocol: MqttProtocol) -> (Svc, TestClient) {
    let prefix = config.topic_prefix();
    let mut tc = TestClient::connect(config.mqtt.port, client_protocol);
    tc.subscribe(&format!("{prefix}#"));
    let generator = FakeGenerator::new(delay);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let generator: Arc<dyn ImageGenerator> = generator.clone();
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    let status_topic = format!("{prefix}status");
    tc.wait_for("online status", |m| m.topic == status_topic && m.json()["state"] == "online");
    (Svc { prefix, shutdown, handle, generator }, tc)
}

fn request(id: &str, frames: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "id": id, "frames": frames })).unwrap()
}

/// The core scenario, shared by rumqttd and mosquitto: request -> image/<id>, retained status,
/// stream frames -> image, clean shutdown -> offline status.
fn core_scenario(port: u16, protocol: MqttProtocol) {
    let (svc, mut tc) = start(test_config(port, protocol), Duration::ZERO, protocol);
    let p = svc.prefix.clone();

    // Request with both modalities, one of them > 10 KiB (rumqttc's default packet limit).
    let big = big_seg_png();
    let body = request("r1", json!({ "segmentation": b64(&big), "sketch": b64(&sketch_png()) }));
    assert!(body.len() > 10 * 1024);
    tc.publish(&format!("{p}request"), body);
    let img = tc.wait_for("image/r1", |m| m.topic == format!("{p}image/r1"));
    let img = decode_png(&img.payload);
    assert_eq!(img.dimensions(), (SIZE as u32, SIZE as u32));
    assert!(img.pixels().any(|px| px.0 == [0, 0, 0]), "the sketch strokes are painted");
    assert!(img.pixels().any(|px| PALETTE.contains(&px.0)), "the classes are painted");

    // A request with a segmentation only: left half grass, right half water.
    tc.publish(&format!("{p}request"), request("r2", json!({ "segmentation": b64(&seg_png()) })));
    let img = decode_png(&tc.wait_for("image/r2", |m| m.topic == format!("{p}image/r2")).payload);
    assert_eq!(img.get_pixel(2, 5).0, PALETTE[1]);
    assert_eq!(img.get_pixel(SIZE as u32 - 3, 5).0, PALETTE[2]);

    // Retained status, seen by a client that subscribes later.
    let mut late = TestClient::connect(port, protocol);
    late.subscribe(&format!("{p}status"));
    let status = late.wait_for("retained status", |m| m.topic == format!("{p}status"));
    assert!(status.retain, "the status is retained");
    let s = status.json();
    assert!(matches!(s["state"].as_str(), Some("online" | "busy")), "{s}");
    assert_eq!(s["modalities"][0]["name"], "segmentation");
    assert_eq!(s["modalities"][1]["name"], "sketch");
    assert_eq!(s["model"]["image_size"], SIZE);
    assert_eq!(s["queue_capacity"], 8);
    assert!(s["last_latency_ms"].is_u64(), "{s}");

    // Stream: a segmentation frame (> 10 KiB), then a sketch frame; both latest maps are used.
    tc.publish(&format!("{p}frame/segmentation"), seg_png());
    let img = decode_png(&tc.wait_for("stream image", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(img.get_pixel(2, 5).0, PALETTE[1]);
    assert!(!img.pixels().any(|px| px.0 == [0, 0, 0]));
    tc.publish(&format!("{p}frame/sketch"), sketch_png());
    let img = decode_png(&tc.wait_for("stream image 2", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(img.get_pixel(2, 5).0, PALETTE[1], "the segmentation is kept");
    assert!(img.pixels().any(|px| px.0 == [0, 0, 0]), "the sketch is added");
    tc.publish(&format!("{p}frame/segmentation"), big);
    let img = decode_png(&tc.wait_for("stream image 3", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(img.dimensions(), (SIZE as u32, SIZE as u32));

    let summary = svc.stop();
    assert_eq!(summary.images_generated, 5, "{summary:?}");
    assert_eq!(summary.errors, 0, "{summary:?}");
    assert_eq!(summary.requests_accepted, 2, "{summary:?}");
    let offline = tc.wait_for("offline status", |m| m.topic == format!("{p}status") && m.json()["state"] == "offline");
    assert_eq!(offline.json(), json!({"state": "offline"}));
}

// ------------------------------------------------------------------------------------------
// Tests.

#[test]
fn core_v311_on_rumqttd() {
    core_scenario(rumqttd().port, MqttProtocol::V311);
}

#[test]
fn core_v5_on_rumqttd() {
    core_scenario(rumqttd().v5_port, MqttProtocol::V5);
}

#[test]
fn core_on_mosquitto() {
    let Some(mosquitto) = start_mosquitto() else {
        println!("note: mosquitto is not installed; skipping the mosquitto test (apt-get install mosquitto)");
        return;
    };
    core_scenario(mosquitto.port, MqttProtocol::V311);
    core_scenario(mosquitto.port, MqttProtocol::V5);
}

#[test]
fn bad_requests_get_errors_with_id_and_code() {
    let (svc, mut tc) = start(test_config(rumqttd().port, MqttProtocol::V311), Duration::ZERO, MqttProtocol::V311);
    let p = svc.prefix.clone();
    let error_topic = format!("{p}error");
    let long_id = "x".repeat(129);
    let seg = b64(&seg_png());
    let cases: Vec<(Vec<u8>, Value, &str)> = vec![
        (b"not json {".to_vec(), Value::Null, "invalid_json"),
        (b"[1, 2]".to_vec(), Value::Null, "invalid_request"),
        (request("b64", json!({ "segmentation": "!!not base64!!" })), json!("b64"), "invalid_base64"),
        (request("unk", json!({ "depth": seg })), json!("unk"), "unknown_modality"),
        (request("empty", json!({})), json!("empty"), "no_frames"),
        (request(&long_id, json!({ "segmentation": seg })), json!(long_id), "invalid_id"),
        (request("", json!({ "segmentation": seg })), json!(""), "invalid_id"),
        (request("a/b", json!({ "segmentation": seg })), json!("a/b"), "invalid_id"),
        (
            serde_json::to_vec(&json!({ "id": "extra", "frames": { "segmentation": seg }, "colour": 1 })).unwrap(),
            json!("extra"),
            "invalid_request",
        ),
        (serde_json::to_vec(&json!({ "frames": { "segmentation": seg } })).unwrap(), Value::Null, "invalid_request"),
        (
            serde_json::to_vec(&json!({ "id": "steps", "frames": { "segmentation": seg }, "steps": 0 })).unwrap(),
            json!("steps"),
            "invalid_steps",
        ),
        (
            serde_json::to_vec(&json!({ "id": "strength", "frames": { "segmentation": seg }, "strength": -1.0 })).unwrap(),
            json!("strength"),
            "invalid_strength",
        ),
        (request("junk", json!({ "segmentation": b64(b"definitely not an image") })), json!("junk"), "not_an_image"),
    ];
    for (payload, id, code) in &cases {
        tc.publish(&format!("{p}request"), payload.clone());
        let e = tc.wait_for(&format!("error {code} for {id}"), |m| m.topic == error_topic).json();
        assert_eq!(&e["id"], id, "{e}");
        assert_eq!(e["code"], *code, "{e}");
        assert!(e["message"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    }
    // Frame errors: unknown modality and an undecodable frame, id null.
    tc.publish(&format!("{p}frame/depth"), seg_png());
    let e = tc.wait_for("frame error", |m| m.topic == error_topic).json();
    assert_eq!((e["id"].clone(), e["code"].clone()), (Value::Null, json!("unknown_modality")), "{e}");
    tc.publish(&format!("{p}frame/sketch"), b"garbage".to_vec());
    let e = tc.wait_for("frame decode error", |m| m.topic == error_topic).json();
    assert_eq!(e["id"], Value::Null, "{e}");
    assert_eq!(e["code"], "not_an_image", "{e}");

    // Nothing else was answered, and no image was generated.
    let rest = tc.drain(Duration::from_millis(300));
    assert!(rest.iter().all(|m| !m.topic.starts_with(&format!("{p}image"))), "unexpected image");
    assert_eq!(svc.generator.calls.load(Ordering::SeqCst), 0);
    let summary = svc.stop();
    assert_eq!(summary.errors, cases.len() as u64 + 2, "{summary:?}");
}

#[test]
fn mqtt5_response_topic_and_correlation_data() {
    let (svc, mut tc) = start(test_config(rumqttd().v5_port, MqttProtocol::V5), Duration::ZERO, MqttProtocol::V5);
    let p = svc.prefix.clone();
    let reply_topic = format!("reply/{}", svc.prefix.trim_end_matches('/').replace('/', "-"));
    tc.subscribe(&reply_topic);

    tc.publish_v5_request(&format!("{p}request"), request("v5", json!({ "segmentation": b64(&big_seg_png()) })), &reply_topic, b"corr-1");
    let reply = tc.wait_for("reply image", |m| m.topic == reply_topic);
    assert_eq!(reply.correlation.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(reply.content_type.as_deref(), Some("image/png"));
    assert_eq!(decode_png(&reply.payload).dimensions(), (SIZE as u32, SIZE as u32));
    let img = tc.wait_for("image/v5", |m| m.topic == format!("{p}image/v5"));
    assert_eq!(img.payload, reply.payload);

    // Errors go to the response topic too, with the correlation data.
    tc.publish_v5_request(&format!("{p}request"), request("v5-bad", json!({})), &reply_topic, &[0, 1, 2, 255]);
    let reply = tc.wait_for("reply error", |m| m.topic == reply_topic);
    assert_eq!(reply.correlation.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    assert_eq!(reply.json()["code"], "no_frames");
    assert_eq!(reply.json()["id"], "v5-bad");
    svc.stop();
}

#[test]
fn v311_client_talks_to_mqtt5_service() {
    // The in-process broker shares one router between its 3.1.1 and 5 listeners.
    let broker = rumqttd();
    let config = test_config(broker.v5_port, MqttProtocol::V5);
    let prefix = config.topic_prefix();
    let mut tc = TestClient::connect(broker.port, MqttProtocol::V311);
    tc.subscribe(&format!("{prefix}#"));
    let generator = FakeGenerator::new(Duration::ZERO);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let generator: Arc<dyn ImageGenerator> = generator.clone();
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    tc.wait_for("online", |m| m.topic == format!("{prefix}status") && m.json()["state"] == "online");
    tc.publish(&format!("{prefix}request"), request("mixed", json!({ "sketch": b64(&sketch_png()) })));
    let img = decode_png(&tc.wait_for("image", |m| m.topic == format!("{prefix}image/mixed")).payload);
    assert_eq!(img.get_pixel(0, 0).0, NO_SEGMENTATION);
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}

#[test]
fn burst_larger_than_the_queue_gets_one_answer_per_id() {
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.limits.queue_depth = 2;
    let (svc, mut tc) = start(config, Duration::from_millis(150), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let n = 10;
    let seg = b64(&seg_png());
    for i in 0..n {
        tc.publish(&format!("{p}request"), request(&format!("burst-{i}"), json!({ "segmentation": seg })));
    }
    let mut answers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let deadline = Instant::now() + WAIT;
    while answers.len() < n && Instant::now() < deadline {
        let Some(m) = tc.try_wait_for(Duration::from_millis(200), &|m: &Msg| {
            m.topic.starts_with(&format!("{p}image/")) || m.topic == format!("{p}error")
        }) else {
            continue;
        };
        let (id, kind) = match m.topic.strip_prefix(&format!("{p}image/")) {
            Some(id) => (id.to_string(), "image".to_string()),
            None => {
                let e = m.json();
                (e["id"].as_str().unwrap().to_string(), e["code"].as_str().unwrap().to_string())
            }
        };
        answers.entry(id).or_default().push(kind);
    }
    // Give duplicates a chance to show up.
    for m in tc.drain(Duration::from_millis(800)) {
        if let Some(id) = m.topic.strip_prefix(&format!("{p}image/")) {
            answers.entry(id.to_string()).or_default().push("image".into());
        } else if m.topic == format!("{p}error") {
            answers.entry(m.json()["id"].as_str().unwrap().to_string()).or_default().push("error".into());
        }
    }
    assert_eq!(answers.len(), n, "{answers:?}");
    for (id, a) in &answers {
        assert_eq!(a.len(), 1, "{id}: {a:?}");
        assert!(a[0] == "image" || a[0] == "queue_full", "{id}: {a:?}");
    }
    let images = answers.values().filter(|a| a[0] == "image").count();
    let full = answers.values().filter(|a| a[0] == "queue_full").count();
    assert!(images >= 2, "a full queue at least: {answers:?}");
    assert!(full >= 1, "{answers:?}");
    let summary = svc.stop();
    assert_eq!(summary.images_generated as usize, images);
    assert_eq!(summary.requests_accepted as usize, images);
}

#[test]
fn duplicate_delivery_of_an_id_is_answered_once() {
    let (svc, mut tc) = start(test_config(rumqttd().port, MqttProtocol::V311), Duration::from_millis(100), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let body = request("dup", json!({ "segmentation": b64(&seg_png()) }));
    tc.publish(&format!("{p}request"), body.clone());
    tc.publish(&format!("{p}request"), body.clone());
    tc.wait_for("image/dup", |m| m.topic == format!("{p}image/dup"));
    // Recently done: still ignored.
    tc.publish(&format!("{p}request"), body);
    let rest = tc.drain(Duration::from_millis(800));
    let again: Vec<&str> =
        rest.iter().filter(|m| m.topic.starts_with(&format!("{p}image")) || m.topic.ends_with("error")).map(|m| m.topic.as_str()).collect();
    assert!(again.is_empty(), "answered twice: {again:?}");
    let summary = svc.stop();
    assert_eq!(summary.images_generated, 1);
    assert_eq!(summary.duplicates_ignored, 2);
}

#[test]
fn latest_frame_wins_while_busy() {
    let (svc, mut tc) = start(test_config(rumqttd().port, MqttProtocol::V311), Duration::from_millis(600), MqttProtocol::V311);
    let p = svc.prefix.clone();
    // The first frame starts a job; while it runs, three more arrive: two are replaced.
    tc.publish(&format!("{p}frame/segmentation"), seg_png());
    std::thread::sleep(Duration::from_millis(100));
    let water = png(&RgbImage::from_pixel(40, 40, Rgb(PALETTE[2])));
    let rock = png(&RgbImage::from_pixel(40, 40, Rgb(PALETTE[3])));
    tc.publish(&format!("{p}frame/segmentation"), water.clone());
    tc.publish(&format!("{p}frame/segmentation"), water);
    tc.publish(&format!("{p}frame/segmentation"), rock);
    let first = decode_png(&tc.wait_for("image 1", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(first.get_pixel(2, 2).0, PALETTE[1]);
    let second = decode_png(&tc.wait_for("image 2", |m| m.topic == format!("{p}image")).payload);
    assert_eq!(second.get_pixel(2, 2).0, PALETTE[3], "the latest frame wins");
    let rest = tc.drain(Duration::from_millis(900));
    assert!(rest.iter().all(|m| m.topic != format!("{p}image")), "only two images");
    let status = rest.iter().rev().find(|m| m.topic == format!("{p}status")).expect("a status").json();
    assert_eq!(status["dropped_frames"], 2, "{status}");
    assert_eq!(status["state"], "online", "{status}");
    let summary = svc.stop();
    assert_eq!(summary.dropped_frames, 2);
    assert_eq!(summary.images_generated, 2);
}

#[test]
fn queued_requests_are_answered_on_shutdown() {
    let mut config = test_config(rumqttd().port, MqttProtocol::V311);
    config.limits.queue_depth = 4;
    let (svc, mut tc) = start(config, Duration::from_millis(400), MqttProtocol::V311);
    let p = svc.prefix.clone();
    let seg = b64(&seg_png());
    for i in 0..3 {
        tc.publish(&format!("{p}request"), request(&format!("s{i}"), json!({ "segmentation": seg })));
    }
    // Wait until the first job runs (and the others are queued), then stop: it finishes, the
    // others get shutting_down.
    tc.wait_for("busy", |m| m.topic == format!("{p}status") && m.json()["state"] == "busy");
    std::thread::sleep(Duration::from_millis(150));
    let summary = svc.stop();
    assert_eq!(summary.images_generated, 1, "{summary:?}");
    tc.wait_for("image/s0", |m| m.topic == format!("{p}image/s0"));
    for id in ["s1", "s2"] {
        let e = tc.wait_for(id, |m| m.topic == format!("{p}error") && m.json()["id"] == id).json();
        assert_eq!(e["code"], "shutting_down");
    }
    tc.wait_for("offline", |m| m.topic == format!("{p}status") && m.json()["state"] == "offline");
}

#[test]
fn service_waits_for_a_broker_that_starts_later() {
    // Nothing listens on the port yet: the service keeps retrying, then connects.
    let port = free_port();
    let config = test_config(port, MqttProtocol::V311);
    let prefix = config.topic_prefix();
    let generator: Arc<dyn ImageGenerator> = FakeGenerator::new(Duration::ZERO);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    std::thread::sleep(Duration::from_millis(500));
    let b = broker::start(port, 0, 16 << 20).expect("broker on the chosen port");
    let mut tc = TestClient::connect(b.port, MqttProtocol::V311);
    tc.subscribe(&format!("{prefix}status"));
    tc.wait_for("online", |m| m.topic == format!("{prefix}status") && m.json()["state"] == "online");
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();
}

#[test]
fn shutdown_without_a_broker_returns() {
    let config = test_config(free_port(), MqttProtocol::V5);
    let generator: Arc<dyn ImageGenerator> = FakeGenerator::new(Duration::ZERO);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    shutdown.store(true, Ordering::SeqCst);
    let summary = handle.join().unwrap().unwrap();
    assert_eq!(summary, ServiceSummary::default());
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

/// rumqttc pitfall: after a reconnect with a clean session the subscriptions are gone. The broker
/// publishes the last will (offline), the service reconnects, subscribes again and says online.
#[test]
fn reconnect_renews_subscriptions_and_status() {
    for clean_session in [true, false] {
        let broker = rumqttd();
        let proxy = Proxy::start(broker.port);
        let mut config = test_config(proxy.port, MqttProtocol::V311);
        config.mqtt.clean_session = clean_session;
        config.mqtt.keep_alive_s = 5;
        let prefix = config.topic_prefix();
        let status = format!("{prefix}status");
        let mut tc = TestClient::connect(broker.port, MqttProtocol::V311);
        tc.subscribe(&format!("{prefix}#"));
        let generator: Arc<dyn ImageGenerator> = FakeGenerator::new(Duration::ZERO);
        let shutdown = Arc::new(AtomicBool::new(false));
        let handle = {
            let shutdown = Arc::clone(&shutdown);
            std::thread::spawn(move || service::run(&config, generator, shutdown))
        };
        tc.wait_for("online", |m| m.topic == status && m.json()["state"] == "online");

        proxy.cut();
        let will = tc.wait_for("last will", |m| m.topic == status && m.json()["state"] == "offline");
        assert_eq!(will.json(), json!({"state": "offline"}));
        tc.wait_for("online again", |m| m.topic == status && m.json()["state"] == "online");

        let body = request("after-reconnect", json!({ "segmentation": b64(&big_seg_png()) }));
        tc.publish(&format!("{prefix}request"), body);
        tc.wait_for("image after reconnect", |m| m.topic == format!("{prefix}image/after-reconnect"));
        shutdown.store(true, Ordering::SeqCst);
        handle.join().unwrap().unwrap();
    }
}
