//! The MQTT service: frames and requests in, generated PNG images out (README "MQTT interface").
//!
//! Topics under the prefix `P` (default `mcm/<device_id>/`):
//! - in `P/frame/<modality>`: raw PNG/JPEG bytes. While the device is busy the latest frame of a
//!   modality replaces the pending one (counted as dropped). The service keeps the latest decoded
//!   map of every modality and generates from all of them, so a sketch stream and a segmentation
//!   stream combine. Output to `P/image`, failures to `P/error` (id null).
//! - in `P/request`: JSON `{"id", "frames": {modality: base64}, "seed"?, "steps"?, "strength"?}`.
//!   Every accepted request gets exactly one answer: the PNG on `P/image/<id>` (and, with MQTT 5,
//!   on its response topic with its correlation data) or an error on `P/error`. When the queue
//!   is full the answer is the error `queue_full`. Duplicate deliveries of an accepted id are
//!   ignored while it is pending or recently done.
//! - out `P/error`: `{"id": <id or null>, "code": "<snake_case>", "message": "..."}`.
//! - out `P/status` (retained): state, model, modalities, queue, counters; the last will sets it
//!   to `{"state":"offline"}`.
//!
//! Threads (rumqttc pitfall: publishing from the thread that drives the event loop can deadlock
//! when the request channel fills): the *loop* thread only drives the rumqttc `Connection` and
//! forwards events through an unbounded channel; the *dispatcher* parses and queues them,
//! answers refusals and renews subscriptions on every CONNACK; the *worker* generates and
//! publishes. Both publish through cloned clients.
//!
//! Error codes: `invalid_json`, `invalid_request`, `invalid_id`, `no_frames`, `unknown_modality`,
//! `invalid_base64`, `invalid_steps`, `invalid_strength`, the frame decoder's codes
//! ([`crate::frames::FrameError::code`]), `queue_full`, `shutting_down`, `invalid_params`,
//! `invalid_maps`, `model_error`, `inference_failed`, `encode_failed`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use image::{ImageFormat, RgbImage};
use serde::{Deserialize, Serialize};

use crate::cond::Maps;
use crate::config::{ConfigError, EdgeConfig, MqttProtocol, SeedPolicy};
use crate::frames::{FrameLimits, decode_frame};
use crate::model_info::ModalityInfo;
use crate::pipeline::{GenerateError, GenerationParams, ImageGenerator};

/// Capacity of the rumqttc request channel (publishes waiting for the event loop).
const CHANNEL_CAPACITY: usize = 64;
/// How often the threads look at the stop flags.
const TICK: Duration = Duration::from_millis(50);
/// How long a publish may wait for room in the request channel once stopping.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Payload of the last will and of the final status.
const OFFLINE: &[u8] = br#"{"state":"offline"}"#;
/// Longest request id, in characters.
const MAX_ID_CHARS: usize = 128;

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread { name: &'static str, source: std::io::Error },
    /// A thread panicked; the service was stopped.
    #[error("thread {0} panicked")]
    Panic(&'static str),
}

/// Counters of a finished run (the same as in the last status).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    /// Images published (stream and requests).
    pub images_generated: u64,
    /// Errors published on `P/error`.
    pub errors: u64,
    /// Stream frames replaced by a newer one before they were used.
    pub dropped_frames: u64,
    /// Requests accepted into the queue.
    pub requests_accepted: u64,
    /// Duplicate deliveries of an accepted request id that were ignored.
    pub duplicates_ignored: u64,
}

/// Register SIGINT and SIGTERM: the first sets the returned flag (pass it to [`run`] for a clean
/// shutdown), a second one while it is set exits the process at once with status 1.
///
/// # Errors
/// The signal handlers could not be registered.
pub fn shutdown_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Run the service until `shutdown` becomes true, then finish the current job, answer the
/// queued requests with `shutting_down`, publish the offline status and disconnect.
///
/// Connection failures are not errors: the service keeps reconnecting every
/// `mqtt.reconnect_delay_ms` and renews its subscriptions and status on every CONNACK.
///
/// # Errors
/// An invalid `config`, a thread that cannot be started or that panicked.
pub fn run(
    config: &EdgeConfig,
    generator: Arc<dyn ImageGenerator>,
    shutdown: Arc<AtomicBool>,
) -> Result<ServiceSummary, ServiceError> {
    config.validate(Path::new("<config>"))?;
    let prefix = config.topic_prefix();
    let (host, port) = config.broker_address().map_err(|message| {
        ServiceError::Config(ConfigError::Invalid { path: "<config>".into(), key: "mqtt.url", message })
    })?;
    let status_topic = format!("{prefix}status");
    let (mqtt, driver) = connect(config, &host, port, &status_topic);
    log::info!(
        "mcm-edge service: broker {host}:{port} (MQTT {}), client id {:?}, prefix {prefix:?}",
        if config.mqtt.protocol == MqttProtocol::V5 { "5" } else { "3.1.1" },
        config.client_id()
    );

    let ctx = Ctx::new(config, generator, mqtt.clone(), prefix);
    let (tx, rx) = mpsc::channel();
    let loop_ctx = LoopCtx {
        tx,
        stop: Arc::new(AtomicBool::new(false)),
        alive: Arc::clone(&ctx.loop_alive),
        reconnect_delay: Duration::from_millis(config.mqtt.reconnect_delay_ms),
    };
    let loop_stop = Arc::clone(&loop_ctx.stop);
    let loop_thread = spawn("mqtt-loop", move || driver.drive(loop_ctx))?;
    let dispatcher = {
        let ctx = ctx.clone();
        spawn("mqtt-dispatch", move || dispatch(ctx, rx))?
    };
    let worker = {
        let ctx = ctx.clone();
        spawn("mcm-worker", move || work(ctx))?
    };

    // Supervise: stop on request, or when a thread ended unexpectedly (a panic).
    while !shutdown.load(Ordering::SeqCst)
        && !dispatcher.is_finished()
        && !worker.is_finished()
        && !loop_thread.is_finished()
    {
        std::thread::sleep(TICK);
    }
    log::info!("stopping: finishing the current job");
    ctx.shared.stopping.store(true, Ordering::SeqCst);
    ctx.shared.wake.notify_all();
    let mut panicked = None;
    if dispatcher.join().is_err() {
        panicked = Some("mqtt-dispatch");
    }
    if worker.join().is_err() {
        panicked = Some("mcm-worker");
    }
    if let Err(e) = ctx.out.publish(&status_topic, OFFLINE.to_vec(), true, None) {
        log::warn!("cannot publish the offline status: {e}");
    }
    mqtt.disconnect();
    loop_stop.store(true, Ordering::SeqCst);
    drop(mqtt);
    let summary = ctx.summary();
    drop(ctx);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loop_thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if loop_thread.is_finished() {
        if loop_thread.join().is_err() {
            panicked = Some("mqtt-loop");
        }
    } else {
        log::warn!("the MQTT event loop did not stop within 5 s; leaving it");
    }
    log::info!("stopped: {summary:?}");
    match panicked {
        Some(name) => Err(ServiceError::Panic(name)),
        None => Ok(summary),
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &'static str, f: F) -> Result<JoinHandle<()>, ServiceError> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|source| ServiceError::Thread { name, source })
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 / 5 behind one small enum.

/// A cloneable handle that publishes and subscribes, for either protocol version.
#[derive(Clone)]
enum Mqtt {
    V4(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

/// The `Connection` of either protocol version, driven by the loop thread.
enum Driver {
    V4(Box<rumqttc::Connection>),
    V5(Box<rumqttc::v5::Connection>),
}

/// What the payload is (sent as the MQTT 5 content type of response-topic publishes).
#[derive(Debug, Clone, Copy)]
enum Content {
    Png,
    Json,
}

impl Content {
    fn mime(self) -> &'static str {
        match self {
            Content::Png => "image/png",
            Content::Json => "application/json",
        }
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    rumqttc::qos(q).unwrap_or(rumqttc::QoS::AtLeastOnce)
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q).unwrap_or(rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
}

fn connect(config: &EdgeConfig, host: &str, port: u16, status_topic: &str) -> (Mqtt, Driver) {
    let m = &config.mqtt;
    match m.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(config.client_id(), host, port);
            o.set_keep_alive(config.keep_alive())
                .set_max_packet_size(m.max_packet_bytes, m.max_packet_bytes)
                .set_clean_session(m.clean_session)
                .set_last_will(rumqttc::LastWill::new(status_topic, OFFLINE.to_vec(), qos4(m.qos), true));
            if let Some(user) = &m.username {
                o.set_credentials(user.clone(), m.password.clone().unwrap_or_default());
            }
            let (client, connection) = rumqttc::Client::new(o, CHANNEL_CAPACITY);
            (Mqtt::V4(client), Driver::V4(Box::new(connection)))
        }
        MqttProtocol::V5 => {
            use rumqttc::v5::mqttbytes::v5::LastWill;
            let mut o = rumqttc::v5::MqttOptions::new(config.client_id(), host, port);
            o.set_keep_alive(config.keep_alive())
                .set_max_packet_size(Some(u32::try_from(m.max_packet_bytes).unwrap_or(u32::MAX)))
                .set_clean_start(m.clean_session)
                .set_last_will(LastWill::new(status_topic, OFFLINE.to_vec(), qos5(m.qos), true, None));
            if !m.clean_session {
                o.set_session_expiry_interval(Some(m.session_expiry_s));
            }
            if let Some(user) = &m.username {
                o.set_credentials(user.clone(), m.password.clone().unwrap_or_default());
            }
            let (client, connection) = rumqttc::v5::Client::new(o, CHANNEL_CAPACITY);
            (Mqtt::V5(client), Driver::V5(Box::new(connection)))
        }
    }
}

impl Mqtt {
    /// Queue a publish without blocking; false when the request channel is full or closed.
    ///
    /// `props` (MQTT 5 only) are sent only on response-topic publishes: rumqttd 0.20 panics the
    /// connection of an MQTT 3.1.1 subscriber that a publish with properties is forwarded to.
    fn try_publish(&self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>, props: Option<&ReplyProps<'_>>) -> bool {
        match (self, props) {
            (Mqtt::V4(c), _) => c.try_publish(topic, qos4(qos), retain, payload).is_ok(),
            (Mqtt::V5(c), None) => c.try_publish(topic, qos5(qos), retain, payload).is_ok(),
            (Mqtt::V5(c), Some(p)) => {
                let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    content_type: Some(p.content.mime().to_string()),
                    correlation_data: p.correlation.map(|c| c.to_vec().into()),
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, qos5(qos), retain, payload, props).is_ok()
            }
        }
    }

    fn try_subscribe(&self, filter: &str, qos: u8) -> bool {
        match self {
            Mqtt::V4(c) => c.try_subscribe(filter, qos4(qos)).is_ok(),
            Mqtt::V5(c) => c.try_subscribe(filter, qos5(qos)).is_ok(),
        }
    }

    fn disconnect(&self) {
        let ok = match self {
            Mqtt::V4(c) => c.try_disconnect().is_ok(),
            Mqtt::V5(c) => c.try_disconnect().is_ok(),
        };
        if !ok {
            log::warn!("cannot queue the MQTT disconnect");
        }
    }
}

/// Where a request's answer also goes: its MQTT 5 response topic and correlation data.
#[derive(Debug, Clone, PartialEq)]
struct ReplyTo {
    topic: String,
    correlation: Option<Vec<u8>>,
}

impl ReplyTo {
    fn props(&self, content: Content) -> ReplyProps<'_> {
        ReplyProps { content, correlation: self.correlation.as_deref() }
    }
}

/// MQTT 5 properties of a publish to a response topic.
struct ReplyProps<'a> {
    content: Content,
    correlation: Option<&'a [u8]>,
}

/// What the loop thread forwards to the dispatcher.
enum LoopEvent {
    Connected { session_present: bool },
    Message { topic: String, payload: Vec<u8>, reply: Option<ReplyTo> },
}

struct LoopCtx {
    tx: Sender<LoopEvent>,
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    reconnect_delay: Duration,
}

/// Clears the "event loop alive" flag when the loop thread ends, even by a panic.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What one poll of either event loop gave.
enum Polled {
    Event(Option<LoopEvent>),
    Disconnected,
    Error(String),
    Closed,
}

impl Driver {
    /// Drive the connection: only forwards events, never publishes (see the module docs).
    fn drive(mut self, ctx: LoopCtx) {
        let _guard = AliveGuard(ctx.alive);
        let mut failures = 0u32;
        let mut stop_seen: Option<Instant> = None;
        loop {
            match self.poll() {
                Polled::Event(Some(event)) => {
                    if let LoopEvent::Connected { session_present } = &event {
                        log::info!("connected to the broker (session present: {session_present})");
                        failures = 0;
                    }
                    if ctx.tx.send(event).is_err() {
                        log::debug!("dispatcher gone; dropping an incoming event");
                    }
                }
                Polled::Event(None) => {}
                Polled::Disconnected | Polled::Closed => break,
                Polled::Error(e) => {
                    if ctx.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    failures += 1;
                    if failures == 1 {
                        log::warn!("MQTT connection: {e}; reconnecting every {:?}", ctx.reconnect_delay);
                    } else {
                        log::debug!("MQTT connection: {e} (attempt {failures})");
                    }
                    let until = Instant::now() + ctx.reconnect_delay;
                    while Instant::now() < until && !ctx.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(TICK.min(ctx.reconnect_delay));
                    }
                }
            }
            // After a stop, keep polling until the queued disconnect went out, but not forever.
            if ctx.stop.load(Ordering::SeqCst) && stop_seen.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        log::debug!("MQTT event loop stopped");
    }

    fn poll(&mut self) -> Polled {
        match self {
            Driver::V4(conn) => {
                use rumqttc::{Event, Outgoing, Packet};
                match conn.recv() {
                    Err(_) => Polled::Closed,
                    Ok(Err(e)) => Polled::Error(e.to_string()),
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        Polled::Event(Some(LoopEvent::Connected { session_present: ack.session_present }))
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => Polled::Event(Some(LoopEvent::Message {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        reply: None,
                    })),
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => Polled::Disconnected,
                    Ok(Ok(_)) => Polled::Event(None),
                }
            }
            Driver::V5(conn) => {
                use rumqttc::Outgoing;
                use rumqttc::v5::Event;
                use rumqttc::v5::mqttbytes::v5::Packet;
                match conn.recv() {
                    Err(_) => Polled::Closed,
                    Ok(Err(e)) => Polled::Error(e.to_string()),
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        Polled::Event(Some(LoopEvent::Connected { session_present: ack.session_present }))
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let reply = p.properties.as_ref().and_then(|props| {
                            props.response_topic.as_ref().map(|topic| ReplyTo {
                                topic: topic.clone(),
                                correlation: props.correlation_data.as_ref().map(|c| c.to_vec()),
                            })
                        });
                        Polled::Event(Some(LoopEvent::Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            reply,
                        }))
                    }
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => Polled::Disconnected,
                    Ok(Ok(_)) => Polled::Event(None),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Publishing.

/// Publishes answers and status; shared (cloned) by the dispatcher, the worker and `run`.
#[derive(Clone)]
struct Outbox {
    mqtt: Mqtt,
    qos: u8,
    max_packet_bytes: usize,
    stopping: Arc<AtomicBool>,
    loop_alive: Arc<AtomicBool>,
}

impl Outbox {
    /// Queue a publish, waiting while the request channel is full (the loop thread drains it;
    /// once stopping, at most [`STOP_GRACE`]).
    fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool, props: Option<ReplyProps<'_>>) -> Result<(), String> {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(format!("invalid topic {topic:?}"));
        }
        let size = payload.len() + topic.len() + props.as_ref().and_then(|p| p.correlation).map_or(0, <[u8]>::len) + 64;
        if size > self.max_packet_bytes {
            return Err(format!("{topic}: {size} bytes exceed mqtt.max_packet_bytes = {}", self.max_packet_bytes));
        }
        let start = Instant::now();
        loop {
            if self.mqtt.try_publish(topic, self.qos, retain, payload.clone(), props.as_ref()) {
                return Ok(());
            }
            if !self.loop_alive.load(Ordering::SeqCst) {
                return Err(format!("{topic}: the MQTT event loop has stopped"));
            }
            if self.stopping.load(Ordering::SeqCst) && start.elapsed() > STOP_GRACE {
                return Err(format!("{topic}: request channel still full after {STOP_GRACE:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn subscribe(&self, filter: &str) -> Result<(), String> {
        let start = Instant::now();
        while !self.mqtt.try_subscribe(filter, self.qos) {
            if !self.loop_alive.load(Ordering::SeqCst) || (self.stopping.load(Ordering::SeqCst) && start.elapsed() > STOP_GRACE) {
                return Err(format!("cannot subscribe to {filter:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state.

/// An accepted request waiting for the worker.
struct Job {
    id: String,
    maps: Maps,
    seed: Option<u64>,
    steps: usize,
    strength: f32,
    reply: Option<ReplyTo>,
}

#[derive(Default)]
struct Pending {
    requests: VecDeque<Job>,
    /// Latest undecoded stream frame per modality.
    frames: BTreeMap<String, Vec<u8>>,
    busy: bool,
}

#[derive(Default)]
struct Stats {
    summary: ServiceSummary,
    last_latency_ms: Option<u64>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    stats: Mutex<Stats>,
    /// Held while a status is built and queued, so that statuses go out in order.
    status_order: Mutex<()>,
    stopping: Arc<AtomicBool>,
    seed_counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the dispatcher and the worker need.
#[derive(Clone)]
struct Ctx {
    generator: Arc<dyn ImageGenerator>,
    config: Arc<EdgeConfig>,
    prefix: String,
    model_id: String,
    out: Outbox,
    shared: Arc<Shared>,
    loop_alive: Arc<AtomicBool>,
}

/// `P/status` payload.
#[derive(Serialize)]
struct Status<'a> {
    state: &'static str,
    device_id: &'a str,
    model: ModelSummary<'a>,
    modalities: &'a [ModalityInfo],
    queue_depth: usize,
    queue_capacity: usize,
    pending_frames: usize,
    dropped_frames: u64,
    last_latency_ms: Option<u64>,
    images_generated: u64,
    errors: u64,
    requests_accepted: u64,
    duplicates_ignored: u64,
    protocol: u8,
    version: &'static str,
}

#[derive(Serialize)]
struct ModelSummary<'a> {
    id: &'a str,
    image_size: usize,
    channels: usize,
    base: &'a str,
    mcm: Option<&'a str>,
    cond_channels: usize,
}

/// `P/error` payload.
#[derive(Serialize)]
struct ErrorMessage<'a> {
    id: Option<&'a str>,
    code: &'a str,
    message: &'a str,
}

impl Ctx {
    fn new(config: &EdgeConfig, generator: Arc<dyn ImageGenerator>, mqtt: Mqtt, prefix: String) -> Ctx {
        let loop_alive = Arc::new(AtomicBool::new(true));
        let stopping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stats: Mutex::new(Stats::default()),
            status_order: Mutex::new(()),
            stopping: Arc::clone(&stopping),
            seed_counter: AtomicU64::new(config.generation.fixed_seed),
        });
        let model_id = config
            .model
            .dir
            .file_name()
            .map_or_else(|| config.model.dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        let out = Outbox {
            mqtt,
            qos: config.mqtt.qos,
            max_packet_bytes: config.mqtt.max_packet_bytes,
            stopping,
            loop_alive: Arc::clone(&loop_alive),
        };
        Ctx { generator, config: Arc::new(config.clone()), prefix, model_id, out, shared, loop_alive }
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    fn summary(&self) -> ServiceSummary {
        lock(&self.shared.stats).summary.clone()
    }

    fn frame_limits(&self) -> FrameLimits {
        FrameLimits { max_bytes: self.config.limits.max_payload_bytes, max_pixels: self.config.limits.max_pixels }
    }

    /// Publish an error answer on `P/error` (and the reply topic) and count it.
    fn error(&self, id: Option<&str>, code: &str, message: &str, reply: Option<&ReplyTo>) {
        log::warn!("error {code} (id {id:?}): {message}");
        lock(&self.shared.stats).summary.errors += 1;
        let body = serde_json::to_vec(&ErrorMessage { id, code, message }).unwrap_or_else(|_| b"{}".to_vec());
        let topic = format!("{}error", self.prefix);
        if let Err(e) = self.out.publish(&topic, body.clone(), false, None) {
            log::error!("cannot publish an error: {e}");
        }
        if let Some(r) = reply
            && let Err(e) = self.out.publish(&r.topic, body, false, Some(r.props(Content::Json)))
        {
            log::warn!("cannot publish an error to the response topic: {e}");
        }
    }

    /// Publish the retained status.
    fn publish_status(&self) {
        let _order = lock(&self.shared.status_order);
        let (queue_depth, pending_frames, busy) = {
            let p = lock(&self.shared.pending);
            (p.requests.len(), p.frames.len(), p.busy)
        };
        let stats = lock(&self.shared.stats);
        let info = self.generator.info();
        let status = Status {
            state: if busy { "busy" } else { "online" },
            device_id: &self.config.mqtt.device_id,
            model: ModelSummary {
                id: &self.model_id,
                image_size: info.image.size,
                channels: info.image.channels,
                base: &info.base.file,
                mcm: info.mcm.as_ref().map(|m| m.file.as_str()),
                cond_channels: info.cond_channels(),
            },
            modalities: &info.modalities,
            queue_depth,
            queue_capacity: self.config.limits.queue_depth,
            pending_frames,
            dropped_frames: stats.summary.dropped_frames,
            last_latency_ms: stats.last_latency_ms,
            images_generated: stats.summary.images_generated,
            errors: stats.summary.errors,
            requests_accepted: stats.summary.requests_accepted,
            duplicates_ignored: stats.summary.duplicates_ignored,
            protocol: self.config.mqtt.protocol.into(),
            version: env!("CARGO_PKG_VERSION"),
        };
        let body = match serde_json::to_vec(&status) {
            Ok(b) => b,
            Err(e) => {
                log::error!("cannot serialize the status: {e}");
                return;
            }
        };
        drop(stats);
        let topic = format!("{}status", self.prefix);
        if let Err(e) = self.out.publish(&topic, body, true, None) {
            log::warn!("cannot publish the status: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatcher: parses incoming messages, queues work, answers refusals.

/// A refused request: the id when known, an error code and a message.
#[derive(Debug, PartialEq)]
struct Refusal {
    id: Option<String>,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(id: Option<&str>, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { id: id.map(str::to_string), code, message: message.into() }
    }
}

/// The JSON of a request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    id: String,
    frames: BTreeMap<String, String>,
    seed: Option<u64>,
    steps: Option<u64>,
    strength: Option<f64>,
}

/// Bounded set of recently accepted request ids (oldest forgotten first).
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        RecentIds { set: HashSet::new(), order: VecDeque::new(), capacity }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.set.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

fn dispatch(ctx: Ctx, rx: Receiver<LoopEvent>) {
    let mut recent = RecentIds::new(ctx.config.limits.recent_ids);
    let frame_prefix = format!("{}frame/", ctx.prefix);
    let request_filter = ctx.config.mqtt.request_filter.clone().unwrap_or_else(|| format!("{}request", ctx.prefix));
    loop {
        let stopping = ctx.stopping();
        let event = if stopping {
            // Answer what already arrived, then leave.
            match rx.try_recv() {
                Ok(e) => e,
                Err(_) => break,
            }
        } else {
            match rx.recv_timeout(TICK) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        match event {
            LoopEvent::Connected { .. } => {
                if stopping {
                    continue;
                }
                for filter in [format!("{frame_prefix}+"), request_filter.clone()] {
                    match ctx.out.subscribe(&filter) {
                        Ok(()) => log::info!("subscribed to {filter}"),
                        Err(e) => log::error!("{e}"),
                    }
                }
                ctx.publish_status();
            }
            LoopEvent::Message { topic, payload, reply } => {
                if let Some(modality) = topic.strip_prefix(&frame_prefix) {
                    if !stopping {
                        on_frame(&ctx, modality, payload);
                    }
                } else if topic_matches(&request_filter, &topic) {
                    on_request(&ctx, &mut recent, &payload, reply, stopping);
                } else {
                    // E.g. a subscription left in a persistent session by an older configuration.
                    log::debug!("ignoring a message on {topic:?}");
                }
            }
        }
    }
    log::debug!("dispatcher stopped");
}

/// Whether `topic` matches the MQTT `filter` (`+`, `#`; a `$share/<group>/` prefix is ignored).
fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_group, f)) => f,
        None => filter,
    };
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (l, Some(t)) if l == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

fn on_frame(ctx: &Ctx, modality: &str, payload: Vec<u8>) {
    if ctx.generator.info().modality(modality).is_none() {
        let known = modality_names(ctx);
        ctx.error(None, "unknown_modality", &format!("frame/{modality}: the model has modalities {known}"), None);
        return;
    }
    let replaced = {
        let mut p = lock(&ctx.shared.pending);
        p.frames.insert(modality.to_string(), payload).is_some()
    };
    if replaced {
        lock(&ctx.shared.stats).summary.dropped_frames += 1;
        log::debug!("frame/{modality}: replaced a pending frame");
    }
    ctx.shared.wake.notify_all();
}

fn modality_names(ctx: &Ctx) -> String {
    let names: Vec<&str> = ctx.generator.info().modalities.iter().map(|m| m.name.as_str()).collect();
    format!("{names:?}")
}

fn on_request(ctx: &Ctx, recent: &mut RecentIds, payload: &[u8], reply: Option<ReplyTo>, stopping: bool) {
    let mut job = match parse_request(ctx, recent, payload, stopping) {
        Ok(Some(job)) => job,
        Ok(None) => return, // duplicate
        Err(r) => {
            ctx.error(r.id.as_deref(), r.code, &r.message, reply.as_ref());
            return;
        }
    };
    job.reply = reply;
    let id = job.id.clone();
    let refused = {
        let mut p = lock(&ctx.shared.pending);
        if p.requests.len() < ctx.config.limits.queue_depth {
            p.requests.push_back(job);
            None
        } else {
            Some(job)
        }
    };
    if let Some(job) = refused {
        let depth = ctx.config.limits.queue_depth;
        ctx.error(Some(&id), "queue_full", &format!("{depth} requests are already waiting; try again later"), job.reply.as_ref());
        return;
    }
    recent.insert(&id);
    lock(&ctx.shared.stats).summary.requests_accepted += 1;
    log::debug!("request {id:?} queued");
    ctx.shared.wake.notify_all();
}

/// Parse and check a request; `Ok(None)` for a duplicate of a recently accepted id.
fn parse_request(ctx: &Ctx, recent: &RecentIds, payload: &[u8], stopping: bool) -> Result<Option<Job>, Refusal> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| Refusal::new(None, "invalid_json", format!("request is not JSON: {e}")))?;
    let raw_id = value.get("id").and_then(serde_json::Value::as_str).map(str::to_string);
    let id = raw_id.as_deref();
    if !value.is_object() {
        return Err(Refusal::new(None, "invalid_request", "request must be a JSON object"));
    }
    let body: RequestBody =
        serde_json::from_value(value).map_err(|e| Refusal::new(id, "invalid_request", format!("invalid request: {e}")))?;
    let id = body.id.as_str();
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(Refusal::new(Some(id), "invalid_id", format!("id must have 1..={MAX_ID_CHARS} characters, not {chars}")));
    }
    if id.contains(['/', '+', '#', '\0']) {
        return Err(Refusal::new(
            Some(id),
            "invalid_id",
            "id must not contain '/', '+', '#' or NUL (it is the last level of the topic image/<id>)",
        ));
    }
    if recent.contains(id) {
        log::info!("request {id:?}: duplicate delivery ignored");
        lock(&ctx.shared.stats).summary.duplicates_ignored += 1;
        return Ok(None);
    }
    if stopping {
        return Err(Refusal::new(Some(id), "shutting_down", "the device is shutting down"));
    }
    let info = ctx.generator.info();
    if body.frames.is_empty() {
        return Err(Refusal::new(Some(id), "no_frames", format!("frames is empty; give at least one of {}", modality_names(ctx))));
    }
    if let Some(unknown) = body.frames.keys().find(|k| info.modality(k).is_none()) {
        return Err(Refusal::new(
            Some(id),
            "unknown_modality",
            format!("frames.{unknown}: unknown modality; the model has {}", modality_names(ctx)),
        ));
    }
    let max_steps = ctx.config.limits.max_steps.min(info.schedule.num_train_timesteps);
    let steps = match body.steps {
        None => ctx.config.generation.steps.min(max_steps),
        Some(s) if s >= 1 && s <= max_steps as u64 => s as usize,
        Some(s) => return Err(Refusal::new(Some(id), "invalid_steps", format!("steps {s} must be within 1..={max_steps}"))),
    };
    let max_strength = ctx.config.limits.max_strength;
    let strength = match body.strength {
        None => ctx.config.generation.strength,
        Some(s) if s.is_finite() && s >= 0.0 && s <= f64::from(max_strength) => s as f32,
        Some(s) => {
            return Err(Refusal::new(Some(id), "invalid_strength", format!("strength {s} must be within 0..={max_strength}")));
        }
    };
    let limits = ctx.frame_limits();
    let mut maps = Maps::new();
    for (name, b64) in &body.frames {
        let modality = info.modality(name).ok_or_else(|| Refusal::new(Some(id), "unknown_modality", name.clone()))?;
        let b64 = strip_data_url(b64);
        // A base64 text longer than 4/3 of the limit cannot decode within it.
        if b64.len() / 4 * 3 > limits.max_bytes + 3 {
            return Err(Refusal::new(
                Some(id),
                "frame_too_large",
                format!("frames.{name}: about {} bytes, the limit is {}", b64.len() / 4 * 3, limits.max_bytes),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| Refusal::new(Some(id), "invalid_base64", format!("frames.{name}: not base64: {e}")))?;
        let map = decode_frame(&bytes, modality, info.image.size, &limits)
            .map_err(|e| Refusal::new(Some(id), e.code(), format!("frames.{name}: {e}")))?;
        maps.insert(name.clone(), map);
    }
    Ok(Some(Job { id: id.to_string(), maps, seed: body.seed, steps, strength, reply: None }))
}

/// `data:image/png;base64,AAAA` -> `AAAA`; anything else unchanged.
fn strip_data_url(s: &str) -> &str {
    if s.starts_with("data:")
        && let Some((_, data)) = s.split_once(";base64,")
    {
        return data;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Worker: generation and answers.

enum Work {
    Request(Job),
    Frames(BTreeMap<String, Vec<u8>>),
}

fn work(ctx: Ctx) {
    let mut latest = Maps::new();
    let mut prefer_frames = false;
    loop {
        let next = {
            let mut p = lock(&ctx.shared.pending);
            loop {
                if ctx.stopping() {
                    break None;
                }
                let take_request = !p.requests.is_empty() && (p.frames.is_empty() || !prefer_frames);
                if take_request {
                    break p.requests.pop_front().map(Work::Request);
                }
                if !p.frames.is_empty() {
                    break Some(Work::Frames(std::mem::take(&mut p.frames)));
                }
                p = ctx.shared.wake.wait_timeout(p, TICK).map_or_else(|e| e.into_inner().0, |(g, _)| g);
            }
        };
        let Some(next) = next else { break };
        prefer_frames = matches!(next, Work::Request(_));
        lock(&ctx.shared.pending).busy = true;
        ctx.publish_status();
        match next {
            Work::Request(job) => run_request(&ctx, job),
            Work::Frames(frames) => run_frames(&ctx, &mut latest, frames),
        }
        lock(&ctx.shared.pending).busy = false;
        ctx.publish_status();
    }
    // Every accepted request gets an answer, also on shutdown.
    let left: Vec<Job> = lock(&ctx.shared.pending).requests.drain(..).collect();
    for job in left {
        ctx.error(Some(&job.id), "shutting_down", "the device is shutting down", job.reply.as_ref());
    }
    log::debug!("worker stopped");
}

fn next_seed(ctx: &Ctx) -> u64 {
    let g = &ctx.config.generation;
    match g.seed_policy {
        SeedPolicy::Fixed => g.fixed_seed,
        SeedPolicy::Random => rand::random(),
        SeedPolicy::Counter => ctx.shared.seed_counter.fetch_add(1, Ordering::Relaxed),
    }
}

fn run_request(ctx: &Ctx, job: Job) {
    let params = GenerationParams {
        seed: job.seed.unwrap_or_else(|| next_seed(ctx)),
        steps: job.steps,
        strength: job.strength,
        eta: ctx.config.generation.eta,
    };
    log::info!("request {:?}: generating ({} steps, strength {}, seed {})", job.id, params.steps, params.strength, params.seed);
    let start = Instant::now();
    let png = match generate_png(ctx, &job.maps, &params) {
        Ok(png) => png,
        Err((code, message)) => {
            ctx.error(Some(&job.id), code, &message, job.reply.as_ref());
            return;
        }
    };
    finish_image(ctx, start);
    let topic = format!("{}image/{}", ctx.prefix, job.id);
    if let Err(e) = ctx.out.publish(&topic, png.clone(), false, None) {
        log::error!("request {:?}: cannot publish the image: {e}", job.id);
    }
    if let Some(r) = &job.reply
        && let Err(e) = ctx.out.publish(&r.topic, png, false, Some(r.props(Content::Png)))
    {
        log::warn!("request {:?}: cannot publish to the response topic: {e}", job.id);
    }
}

fn run_frames(ctx: &Ctx, latest: &mut Maps, frames: BTreeMap<String, Vec<u8>>) {
    let info = ctx.generator.info();
    let limits = ctx.frame_limits();
    let mut fresh = false;
    for (name, bytes) in frames {
        let Some(modality) = info.modality(&name) else { continue };
        match decode_frame(&bytes, modality, info.image.size, &limits) {
            Ok(map) => {
                latest.insert(name, map);
                fresh = true;
            }
            Err(e) => ctx.error(None, e.code(), &format!("frame/{name}: {e}"), None),
        }
    }
    if !fresh {
        return;
    }
    let params = GenerationParams {
        seed: next_seed(ctx),
        steps: ctx.config.generation.steps.min(info.schedule.num_train_timesteps),
        strength: ctx.config.generation.strength,
        eta: ctx.config.generation.eta,
    };
    let start = Instant::now();
    match generate_png(ctx, latest, &params) {
        Ok(png) => {
            finish_image(ctx, start);
            let topic = format!("{}image", ctx.prefix);
            if let Err(e) = ctx.out.publish(&topic, png, false, None) {
                log::error!("cannot publish the stream image: {e}");
            }
        }
        Err((code, message)) => ctx.error(None, code, &message, None),
    }
}

fn finish_image(ctx: &Ctx, start: Instant) {
    let ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut stats = lock(&ctx.shared.stats);
    stats.summary.images_generated += 1;
    stats.last_latency_ms = Some(ms);
    log::info!("image generated in {ms} ms");
}

/// Generate and encode; on failure an error code and message.
fn generate_png(ctx: &Ctx, maps: &Maps, params: &GenerationParams) -> Result<Vec<u8>, (&'static str, String)> {
    let image = ctx.generator.generate(maps, params).map_err(|e| {
        let code = match &e {
            GenerateError::Cond(_) => "invalid_maps",
            GenerateError::Param(_) => "invalid_params",
            GenerateError::Model(_) => "model_error",
            GenerateError::Inference(_) => "inference_failed",
        };
        (code, format!("generation failed: {e}"))
    })?;
    encode_png(&image).map_err(|e| ("encode_failed", format!("cannot encode the PNG: {e}")))
}

/// Encode an RGB image as PNG bytes.
fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut buf = Cursor::new(Vec::new());
    image.write_to(&mut buf, ImageFormat::Png)?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_ids_forget_the_oldest() {
        let mut r = RecentIds::new(2);
        r.insert("a");
        r.insert("b");
        r.insert("a");
        assert!(r.contains("a") && r.contains("b"));
        r.insert("c");
        assert!(!r.contains("a") && r.contains("b") && r.contains("c"));
    }

    #[test]
    fn topic_filters() {
        assert!(topic_matches("mcm/a/request", "mcm/a/request"));
        assert!(!topic_matches("mcm/a/request", "mcm/b/request"));
        assert!(topic_matches("$share/edge/mcm/+/request", "mcm/b/request"));
        assert!(!topic_matches("mcm/+/request", "mcm/b/request/x"));
        assert!(topic_matches("mcm/#", "mcm/b/request/x"));
        assert!(topic_matches("mcm/#", "mcm"));
        assert!(!topic_matches("mcm/+", "mcm"));
    }

    #[test]
    fn data_urls_are_stripped() {
        assert_eq!(strip_data_url("data:image/png;base64,QUJD"), "QUJD");
        assert_eq!(strip_data_url("QUJD"), "QUJD");
    }
}
