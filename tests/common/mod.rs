//! Shared by the end-to-end tests: a fake generator, test frames, brokers (in-process rumqttd,
//! mosquitto started by the test), a TCP proxy that can cut connections, an MQTT test client and
//! the service under test.
#![allow(dead_code)] // each test file uses a part of it

pub use std::io::Cursor;
pub use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Stdio};
pub use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
pub use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
pub use std::sync::{Arc, OnceLock};
pub use std::thread::JoinHandle;
pub use std::time::{Duration, Instant};

pub use base64::Engine;
pub use image::{ImageFormat, Rgb, RgbImage};
pub use mcm_edge::broker::{self, RunningBroker};
pub use mcm_edge::contract::{ModalityMap, Maps};
pub use mcm_edge::config::{EdgeConfig, MqttProtocol};
pub use mcm_edge::contract::ModelInfo;
pub use mcm_edge::diffusion::{GenerateError, GenerationParams, ImageGenerator};
pub use mcm_edge::service::{self, ServiceError, ServiceSummary};
pub use serde_json::{Value, json};

pub const SIZE: usize = 32;
pub const WAIT: Duration = Duration::from_secs(20);
pub const PALETTE: [[u8; 3]; 4] = [[120, 180, 255], [40, 160, 60], [30, 60, 200], [128, 128, 128]];
pub const NO_SEGMENTATION: [u8; 3] = [200, 200, 200];

pub const MODEL_TOML: &str = r#"
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

pub struct FakeGenerator {
    pub info: ModelInfo,
    pub delay: Duration,
    pub calls: AtomicUsize,
}

impl FakeGenerator {
    pub fn new(delay: Duration) -> Arc<Self> {
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

pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png).unwrap();
    buf.into_inner()
}

/// 64x64 segmentation: left half grass (class 1), right half water (class 2).
pub fn seg_png() -> Vec<u8> {
    png(&RgbImage::from_fn(64, 64, |x, _| Rgb(if x < 32 { PALETTE[1] } else { PALETTE[2] })))
}

/// 256x256 segmentation of pseudo-random classes: a PNG far above rumqttc's 10 KiB default.
pub fn big_seg_png() -> Vec<u8> {
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
pub fn sketch_png() -> Vec<u8> {
    png(&RgbImage::from_fn(64, 64, |x, _| if (28..36).contains(&x) { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) }))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_png(bytes: &[u8]) -> RgbImage {
    image::load_from_memory_with_format(bytes, ImageFormat::Png).expect("a PNG").to_rgb8()
}

// ------------------------------------------------------------------------------------------
// Brokers.

pub fn rumqttd() -> RunningBroker {
    static BROKER: OnceLock<RunningBroker> = OnceLock::new();
    *BROKER.get_or_init(|| broker::start_local().expect("in-process broker"))
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// A mosquitto started by the test on a free port, with its own folder (config, persistence
/// file, certificates); killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

static MOSQUITTO_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Mosquitto {
    /// A folder for the broker's files, then `conf(port, folder)` gives the config (with the
    /// `listener` line); `None` when mosquitto is not installed.
    pub fn start_with(conf: impl FnOnce(u16, &std::path::Path) -> String) -> Option<Mosquitto> {
        find_mosquitto()?;
        let port = free_port();
        let n = MOSQUITTO_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("mcm-edge-mosquitto-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Started as root, mosquitto drops to its own user, which must be able to write here.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf(port, &dir)).unwrap();
        let mut m = Mosquitto { child: None, port, dir, conf: conf_path };
        m.restart();
        Some(m)
    }

    /// Stop with SIGTERM (a persistent broker saves its sessions) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Start (again) with the same config and port; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is running");
        let bin = find_mosquitto().expect("mosquitto");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin).arg("-c").arg(&self.conf).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))).is_err() {
            let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start on port {}: {log}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain mosquitto (anonymous, no persistence); `None` when it is not installed.
pub fn start_mosquitto() -> Option<Mosquitto> {
    Mosquitto::start_with(|port, _| format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))
}

/// A TCP proxy in front of a broker whose connections the test can cut, to make the broker see
/// an abrupt disconnect (last will) and the service reconnect.
pub struct Proxy {
    pub port: u16,
    pub conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
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
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Test client (MQTT 3.1.1 or 5), receiving everything under a filter.

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// The broker's DUP flag: a redelivery of a publish it may have delivered before.
    pub dup: bool,
    pub correlation: Option<Vec<u8>>,
    pub content_type: Option<String>,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.topic))
    }
}

pub enum Ev {
    SubAck,
    Msg(Msg),
}

#[derive(Clone)]
pub enum TcClient {
    V4(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

/// Forward a connection's events to the test thread until it hangs up; connection errors are
/// retried after a pause (the event loop reconnects by itself).
pub fn pump<E, Er>(events: impl Iterator<Item = Result<E, Er>>, tx: &mpsc::Sender<Ev>, to_ev: impl Fn(E) -> Option<Ev>) {
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

pub struct TestClient {
    pub client: TcClient,
    pub rx: Receiver<Ev>,
    pub seen: Vec<Msg>,
    pub qos: u8,
}

pub static CLIENT_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestClient {
    pub fn connect(port: u16, protocol: MqttProtocol) -> TestClient {
        let id = format!("test-{}-{}", std::process::id(), CLIENT_COUNTER.fetch_add(1, Ordering::SeqCst));
        Self::connect_with(port, protocol, &id, true, 1)
    }

    /// A client with its own id, session mode and QoS (of subscriptions and publishes).
    pub fn connect_with(port: u16, protocol: MqttProtocol, id: &str, clean_session: bool, qos: u8) -> TestClient {
        let (tx, rx) = mpsc::channel();
        let client = match protocol {
            MqttProtocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                o.set_max_packet_size(64 << 20, 64 << 20).set_keep_alive(Duration::from_secs(5)).set_clean_session(clean_session);
                let (client, mut conn) = rumqttc::Client::new(o, 100);
                std::thread::spawn(move || {
                    use rumqttc::{Event, Packet};
                    pump(conn.iter(), &tx, |ev| match ev {
                        Event::Incoming(Packet::Publish(p)) => Some(Ev::Msg(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
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
                o.set_max_packet_size(Some(64 << 20)).set_keep_alive(Duration::from_secs(5)).set_clean_start(clean_session);
                if !clean_session {
                    o.set_session_expiry_interval(Some(600));
                }
                let (client, mut conn) = rumqttc::v5::Client::new(o, 100);
                std::thread::spawn(move || {
                    use rumqttc::v5::Event;
                    use rumqttc::v5::mqttbytes::v5::Packet;
                    pump(conn.iter(), &tx, |ev| match ev {
                        Event::Incoming(Packet::Publish(p)) => Some(Ev::Msg(Msg {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
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
        TestClient { client, rx, seen: Vec::new(), qos }
    }

    /// Subscribe (at the client's QoS) and wait for the SUBACK.
    pub fn subscribe(&mut self, filter: &str) {
        match &self.client {
            TcClient::V4(c) => c.subscribe(filter, rumqttc::qos(self.qos).unwrap()).unwrap(),
            TcClient::V5(c) => c.subscribe(filter, rumqttc::v5::mqttbytes::qos(self.qos).unwrap()).unwrap(),
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

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload = payload.into();
        match &self.client {
            TcClient::V4(c) => c.publish(topic, rumqttc::qos(self.qos).unwrap(), false, payload).unwrap(),
            TcClient::V5(c) => c.publish(topic, rumqttc::v5::mqttbytes::qos(self.qos).unwrap(), false, payload).unwrap(),
        }
    }

    /// MQTT 5 publish with a response topic and correlation data.
    pub fn publish_v5_request(&self, topic: &str, payload: Vec<u8>, response_topic: &str, correlation: &[u8]) {
        let TcClient::V5(c) = &self.client else { panic!("not an MQTT 5 client") };
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(response_topic.to_string()),
            correlation_data: Some(correlation.to_vec().into()),
            ..Default::default()
        };
        c.publish_with_properties(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload, props).unwrap();
    }

    /// The first message (seen or arriving within [`WAIT`]) matching `pred`; it is consumed.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        self.try_wait_for(WAIT, &pred).unwrap_or_else(|| {
            let topics: Vec<&str> = self.seen.iter().map(|m| m.topic.as_str()).collect();
            panic!("timed out waiting for {what}; unmatched messages on {topics:?}")
        })
    }

    pub fn try_wait_for(&mut self, wait: Duration, pred: &impl Fn(&Msg) -> bool) -> Option<Msg> {
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
    pub fn drain(&mut self, wait: Duration) -> Vec<Msg> {
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

pub struct Svc {
    pub prefix: String,
    pub shutdown: Arc<AtomicBool>,
    pub handle: JoinHandle<Result<ServiceSummary, ServiceError>>,
    pub generator: Arc<FakeGenerator>,
}

impl Svc {
    pub fn stop(self) -> ServiceSummary {
        self.shutdown.store(true, Ordering::SeqCst);
        self.handle.join().expect("service thread").expect("service result")
    }
}

pub static DEVICE_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn test_config(port: u16, protocol: MqttProtocol) -> EdgeConfig {
    let mut config = EdgeConfig::default();
    config.mqtt.port = port;
    config.mqtt.protocol = protocol;
    config.mqtt.device_id = format!("dev{}-{}", std::process::id(), DEVICE_COUNTER.fetch_add(1, Ordering::SeqCst));
    config.mqtt.reconnect_delay_ms = 100;
    config.generation.steps = 4;
    config
}

/// Start the service and a test client subscribed to `P/#`; returns once the service said online.
pub fn start(config: EdgeConfig, delay: Duration, client_protocol: MqttProtocol) -> (Svc, TestClient) {
    let mut tc = TestClient::connect(config.mqtt.port, client_protocol);
    tc.subscribe(&format!("{}#", config.mqtt.topic_prefix()));
    let svc = spawn_service(config, delay, &mut tc);
    (svc, tc)
}

/// Start the service with a fake generator taking `delay` per image; returns once `tc`
/// (subscribed to `P/#`) saw it online.
pub fn spawn_service(config: EdgeConfig, delay: Duration, tc: &mut TestClient) -> Svc {
    let prefix = config.mqtt.topic_prefix();
    let generator = FakeGenerator::new(delay);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let generator: Arc<dyn ImageGenerator> = generator.clone();
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    let status_topic = format!("{prefix}status");
    tc.wait_for("online status", |m| m.topic == status_topic && m.json()["state"] == "online");
    Svc { prefix, shutdown, handle, generator }
}

pub fn request(id: &str, frames: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "id": id, "frames": frames })).unwrap()
}

// ------------------------------------------------------------------------------------------
// The real device binary.

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
