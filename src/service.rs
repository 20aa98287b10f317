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
//! publishes. Both publish through cloned clients (transport: [`crate::mqtt`]).
//!
//! Incoming publishes are acknowledged once handled, in arrival order ([`AckQueue`]): a request
//! when it has been answered, a frame or a refusal on arrival (after the requests before it).
//! The status display, when configured, is redrawn from the same state.
//!
//! Error codes: `invalid_json`, `invalid_request`, `invalid_id`, `no_frames`, `unknown_modality`,
//! `invalid_base64`, `invalid_steps`, `invalid_strength`, the frame decoder's codes
//! ([`crate::frames::FrameError::code`]), `queue_full`, `shutting_down`, `invalid_params`,
//! `invalid_maps`, `model_error`, `inference_failed`, `encode_failed`, `message_too_large`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::{ImageFormat, RgbImage};
use serde::Serialize;

use crate::contract::Maps;
use crate::config::{ConfigError, EdgeConfig, MqttProtocol, SeedPolicy};
use crate::mqtt::{self, Ack, AckQueue, Backoff, Content, LoopCtx, LoopEvent, Mqtt, OFFLINE, ReplyProps, ReplyTo, Settings, Ticket, TransportError, topic_matches};
use crate::display::{BrokerState, PanelState, render_map};
use crate::error_code::ErrorCode;
use crate::framebuffer::{DisplayError, StatusDisplay};
use crate::frames::{FrameLimits, decode_frame};
use crate::contract::ModalityInfo;
use crate::diffusion::{GenerateError, GenerationParams, ImageGenerator};
use crate::request::{self, Refusal, Request, RequestRules};

/// How often the threads look at the stop flags.
const TICK: Duration = Duration::from_millis(50);
/// Longest request id echoed in an error and in the log, in characters (valid ids have at most
/// [`request::MAX_ID_CHARS`]).
const MAX_ECHO_ID: usize = 160;
/// Longest error message published and logged, in characters.
const MAX_ECHO_MESSAGE: usize = 1000;
/// How long a publish may wait for room in the request channel once stopping.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The connection settings (credentials, TLS files) are unusable.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The status display (framebuffer) cannot be opened.
    #[error(transparent)]
    Display(#[from] DisplayError),
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
/// Connection failures are not errors: the service keeps reconnecting with a backoff from
/// `mqtt.reconnect_delay_ms` up to `mqtt.reconnect_max_delay_ms` and renews its subscriptions and
/// status on every CONNACK.
///
/// # Errors
/// An invalid `config`, unreadable credential or TLS files, a thread that cannot be started or
/// that panicked.
pub fn run(
    config: &EdgeConfig,
    generator: Arc<dyn ImageGenerator>,
    shutdown: Arc<AtomicBool>,
) -> Result<ServiceSummary, ServiceError> {
    config.validate(Path::new("<config>"))?;
    let prefix = config.mqtt.topic_prefix();
    let settings = Settings::from_config(&config.mqtt)?;
    let display = StatusDisplay::new(&config.display)?;
    if config.display.enabled {
        log::info!("status display: {}", config.display.describe());
    }
    let status_topic = format!("{prefix}status");
    let (mqtt, driver) = mqtt::connect(&config.mqtt, &settings, &status_topic);
    log::info!(
        "mcm-edge service: broker {}:{} (MQTT {}{}), client id {:?}, prefix {prefix:?}",
        settings.host,
        settings.port,
        if config.mqtt.protocol == MqttProtocol::V5 { "5" } else { "3.1.1" },
        if settings.uses_tls() { ", TLS" } else { "" },
        config.mqtt.client_id()
    );

    let ctx = Ctx::new(config, generator, mqtt.clone(), prefix, display);
    let (tx, rx) = mpsc::channel();
    let loop_ctx = LoopCtx {
        tx,
        stop: Arc::new(AtomicBool::new(false)),
        alive: Arc::clone(&ctx.loop_alive),
        connected: Arc::clone(&ctx.connected),
        backoff: Backoff::new(
            Duration::from_millis(config.mqtt.reconnect_delay_ms),
            Duration::from_millis(config.mqtt.reconnect_max_delay_ms),
        ),
        clean_session: config.mqtt.clean_session,
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
    ctx.refresh_display(BrokerState::Offline);
    drop(ctx); // the last client handles: lets the event loop end
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
// Publishing.

/// Publishes answers and status; shared (cloned) by the dispatcher, the worker and `run`.
#[derive(Clone)]
struct Outbox {
    mqtt: Mqtt,
    qos: u8,
    max_packet_bytes: usize,
    stopping: Arc<AtomicBool>,
    loop_alive: Arc<AtomicBool>,
    /// Acknowledgements of incoming publishes, released in arrival order.
    acks: Arc<Mutex<AckQueue>>,
}

impl Outbox {
    /// Queue a publish, waiting while the request channel is full (the loop thread drains it;
    /// once stopping, at most [`STOP_GRACE`]).
    fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool, props: Option<ReplyProps<'_>>) -> Result<(), String> {
        if topic.is_empty() || topic.contains(['+', '#']) || !mqtt::topic_text_ok(topic) {
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

    /// Queue the acknowledgement of a publish that just arrived (dispatcher only, in arrival order).
    fn track(&self, ack: Ack) -> Ticket {
        lock(&self.acks).push(ack)
    }

    /// The publish of `ticket` has been handled: send its acknowledgement and those it held
    /// back, in arrival order (see [`AckQueue`]); waits for room in the request channel like
    /// [`Outbox::publish`]. The queue stays locked while sending, so that order holds.
    fn ack(&self, ticket: Ticket) {
        let mut acks = lock(&self.acks);
        for ack in acks.done(ticket) {
            let start = Instant::now();
            while !self.mqtt.try_ack(&ack) {
                if !self.loop_alive.load(Ordering::SeqCst) || (self.stopping.load(Ordering::SeqCst) && start.elapsed() > STOP_GRACE) {
                    log::warn!("cannot acknowledge {ack:?}; the broker will deliver it again");
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
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
    request: Request,
    reply: Option<ReplyTo>,
    /// Its acknowledgement, sent once the request has been answered.
    ack: Option<Ticket>,
}

#[derive(Default)]
struct Pending {
    requests: VecDeque<Job>,
    /// Latest undecoded stream frame per modality.
    frames: BTreeMap<String, Vec<u8>>,
    busy: bool,
    /// The request being generated: its id and its acknowledgement, sent once it is answered.
    running: Option<(String, Option<Ticket>)>,
}

#[derive(Default)]
struct Stats {
    summary: ServiceSummary,
    last_latency_ms: Option<u64>,
    /// Pictures of the last input map and the last output, for the status display.
    last_input: Option<RgbImage>,
    last_output: Option<RgbImage>,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    stats: Mutex<Stats>,
    /// Held while a status is built and queued, so that statuses go out in order.
    status_order: Mutex<()>,
    stopping: Arc<AtomicBool>,
    seed_counter: AtomicU64,
    /// The last status display write failed (logged once).
    display_failing: AtomicBool,
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
    /// Whether the broker connection is up (set by the loop thread).
    connected: Arc<AtomicBool>,
    display: Arc<Mutex<StatusDisplay>>,
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
    code: ErrorCode,
    message: &'a str,
}

impl Ctx {
    fn new(config: &EdgeConfig, generator: Arc<dyn ImageGenerator>, mqtt: Mqtt, prefix: String, display: StatusDisplay) -> Ctx {
        let loop_alive = Arc::new(AtomicBool::new(true));
        let stopping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            stats: Mutex::new(Stats::default()),
            status_order: Mutex::new(()),
            stopping: Arc::clone(&stopping),
            seed_counter: AtomicU64::new(config.generation.fixed_seed),
            display_failing: AtomicBool::new(false),
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
            acks: Arc::default(),
        };
        let connected = Arc::new(AtomicBool::new(false));
        let display = Arc::new(Mutex::new(display));
        Ctx { generator, config: Arc::new(config.clone()), prefix, model_id, out, shared, loop_alive, connected, display }
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
    fn error(&self, id: Option<&str>, code: ErrorCode, message: &str, reply: Option<&ReplyTo>) {
        // An oversized id, key or topic in the input is cut, never echoed in full.
        let id = id.map(|id| clip(id, MAX_ECHO_ID));
        let (id, message) = (id.as_deref(), &*clip(message, MAX_ECHO_MESSAGE));
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

    /// Redraw the status display: at once for `Offline` (the last frame), otherwise at most every
    /// `display.refresh_ms`. A failed write is logged, never fatal.
    fn refresh_display(&self, broker: BrokerState) {
        let mut display = lock(&self.display);
        let state = || {
            let queue_depth = lock(&self.shared.pending).requests.len();
            let stats = lock(&self.shared.stats);
            PanelState {
                device_id: self.config.mqtt.device_id.clone(),
                broker,
                last_input: stats.last_input.clone(),
                last_output: stats.last_output.clone(),
                last_latency_ms: stats.last_latency_ms,
                queue_depth,
                queue_capacity: self.config.limits.queue_depth,
                images_generated: stats.summary.images_generated,
                errors: stats.summary.errors,
            }
        };
        let shown = match broker {
            BrokerState::Offline => display.show_now(&state()),
            _ if display.due() => display.show_now(&state()),
            _ => Ok(()),
        };
        // The first failure is a warning, repeats are not (a redraw is tried twice a second).
        match shown {
            Ok(()) => self.shared.display_failing.store(false, Ordering::Relaxed),
            Err(e) if !self.shared.display_failing.swap(true, Ordering::Relaxed) => log::warn!("status display: {e}"),
            Err(e) => log::debug!("status display: {e}"),
        }
    }

    /// The broker state for the display, from the loop thread's view.
    fn broker_state(&self) -> BrokerState {
        if self.connected.load(Ordering::SeqCst) { BrokerState::Online } else { BrokerState::Connecting }
    }

    /// Keep the pictures of the last input and output for the display (when it is on).
    fn record_images(&self, maps: &Maps, output: &RgbImage) {
        if !self.config.display.enabled {
            return;
        }
        let info = self.generator.info();
        let input = info.modalities.iter().find_map(|m| maps.get(&m.name).map(|map| render_map(map, m)));
        let mut stats = lock(&self.shared.stats);
        stats.last_input = input;
        stats.last_output = Some(output.clone());
    }

    /// Publish the retained status (and refresh the display).
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
        self.refresh_display(self.broker_state());
    }
}

// ---------------------------------------------------------------------------------------------
// Dispatcher: parses incoming messages, queues work, answers refusals.

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
                Err(RecvTimeoutError::Timeout) => {
                    ctx.refresh_display(ctx.broker_state());
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        };
        match event {
            LoopEvent::Connected { .. } => {
                lock(&ctx.out.acks).new_connection();
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
            LoopEvent::Oversized { bytes, max } => ctx.error(
                None,
                ErrorCode::MessageTooLarge,
                &format!("a {bytes}-byte message exceeded mqtt.max_packet_bytes = {max} and was dropped"),
                None,
            ),
            LoopEvent::Message { topic, payload, reply, ack } => {
                let ticket = ctx.out.track(ack);
                if topic_matches(&request_filter, &topic) {
                    // Acknowledged once answered (by the worker when queued).
                    if let Some(ticket) = on_request(&ctx, &mut recent, &payload, reply, ticket, stopping) {
                        ctx.out.ack(ticket);
                    }
                    continue;
                }
                match topic.strip_prefix(&frame_prefix) {
                    Some(modality) if !stopping => on_frame(&ctx, modality, payload),
                    Some(_) => {}
                    // E.g. a subscription left in a persistent session by an older configuration.
                    None => log::debug!("ignoring a message on {topic:?}"),
                }
                // A frame is only the latest picture of a stream: acknowledged on arrival.
                ctx.out.ack(ticket);
            }
        }
    }
    log::debug!("dispatcher stopped");
}

fn on_frame(ctx: &Ctx, modality: &str, payload: Vec<u8>) {
    if ctx.generator.info().modality(modality).is_none() {
        let known = modality_names(ctx);
        ctx.error(None, ErrorCode::UnknownModality, &format!("frame/{modality}: the model has modalities {known}"), None);
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

/// Queue or refuse a request; returns its ack when it is done with here (refused, duplicate),
/// `None` when the queued job carries it.
fn on_request(ctx: &Ctx, recent: &mut RecentIds, payload: &[u8], reply: Option<ReplyTo>, ack: Ticket, stopping: bool) -> Option<Ticket> {
    let mut job = match parse_request(ctx, recent, payload, stopping) {
        Ok(Parsed::Job(job)) => job,
        Ok(Parsed::Duplicate(id)) => return adopt_ack(ctx, &id, ack),
        Err(r) => {
            ctx.error(r.id.as_deref(), r.code, &r.message, reply.as_ref());
            return Some(ack);
        }
    };
    job.reply = reply;
    job.ack = Some(ack);
    let id = job.request.id.clone();
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
        ctx.error(Some(&id), ErrorCode::QueueFull, &format!("{depth} requests are already waiting; try again later"), job.reply.as_ref());
        return job.ack;
    }
    recent.insert(&id);
    lock(&ctx.shared.stats).summary.requests_accepted += 1;
    log::debug!("request {id:?} queued");
    ctx.shared.wake.notify_all();
    None
}

/// Parse and check a request; `Ok(None)` for a duplicate of a recently accepted id.
fn parse_request(ctx: &Ctx, recent: &RecentIds, payload: &[u8], stopping: bool) -> Result<Parsed, Refusal> {
    let body = request::parse_body(payload)?;
    if recent.contains(&body.id) {
        log::info!("request {:?}: duplicate delivery ignored", body.id);
        lock(&ctx.shared.stats).summary.duplicates_ignored += 1;
        return Ok(Parsed::Duplicate(body.id));
    }
    if stopping {
        return Err(Refusal::new(Some(&body.id), ErrorCode::ShuttingDown, "the device is shutting down"));
    }
    let (config, info) = (&ctx.config, ctx.generator.info());
    let rules = RequestRules {
        info,
        frames: ctx.frame_limits(),
        max_steps: config.limits.max_steps,
        max_strength: config.limits.max_strength,
        default_steps: config.generation.steps,
        default_strength: config.generation.strength,
    };
    Ok(Parsed::Job(Job { request: body.check(&rules)?, reply: None, ack: None }))
}

/// A request that passed [`parse_request`].
enum Parsed {
    Job(Job),
    /// Another delivery of a recently accepted id.
    Duplicate(String),
}

/// A duplicate delivery of `id` (e.g. redelivered by the broker after a reconnect) arrived with
/// `ticket`. While `id` is still queued or being generated, its answer acknowledges the new
/// delivery instead, so that a crash before the answer still gets it delivered again; returns
/// the ticket to release now (the replaced one, void on a new connection, or else the new one).
fn adopt_ack(ctx: &Ctx, id: &str, ticket: Ticket) -> Option<Ticket> {
    let mut guard = lock(&ctx.shared.pending);
    let Pending { requests, running, .. } = &mut *guard;
    let queued = requests.iter_mut().find(|j| j.request.id == id).map(|j| &mut j.ack);
    match queued.or_else(|| running.as_mut().filter(|r| r.0 == id).map(|r| &mut r.1)) {
        Some(slot) => slot.replace(ticket),
        None => Some(ticket),
    }
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
                let take_request = p.frames.is_empty() || !prefer_frames;
                if take_request && let Some(mut job) = p.requests.pop_front() {
                    p.running = Some((job.request.id.clone(), job.ack.take()));
                    break Some(Work::Request(job));
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
        ctx.error(Some(&job.request.id), ErrorCode::ShuttingDown, "the device is shutting down", job.reply.as_ref());
        ack_job(&ctx, &job);
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
    answer_request(ctx, &job);
    let running = lock(&ctx.shared.pending).running.take();
    if let Some(ticket) = running.and_then(|(_, ticket)| ticket) {
        ctx.out.ack(ticket);
    }
}

/// Acknowledge a request to the broker once it has been answered (see [`Ack`]).
fn ack_job(ctx: &Ctx, job: &Job) {
    if let Some(ticket) = job.ack {
        ctx.out.ack(ticket);
    }
}

/// Generate and publish the image, or the error.
fn answer_request(ctx: &Ctx, job: &Job) {
    let params = GenerationParams {
        seed: job.request.seed.unwrap_or_else(|| next_seed(ctx)),
        steps: job.request.steps,
        strength: job.request.strength,
        eta: ctx.config.generation.eta,
    };
    log::info!("request {:?}: generating ({} steps, strength {}, seed {})", job.request.id, params.steps, params.strength, params.seed);
    let start = Instant::now();
    let png = match generate_png(ctx, &job.request.maps, &params) {
        Ok(png) => png,
        Err((code, message)) => {
            ctx.error(Some(&job.request.id), code, &message, job.reply.as_ref());
            return;
        }
    };
    finish_image(ctx, start);
    let topic = format!("{}image/{}", ctx.prefix, job.request.id);
    if let Err(e) = ctx.out.publish(&topic, png.clone(), false, None) {
        log::error!("request {:?}: cannot publish the image: {e}", job.request.id);
    }
    if let Some(r) = &job.reply
        && let Err(e) = ctx.out.publish(&r.topic, png, false, Some(r.props(Content::Png)))
    {
        log::warn!("request {:?}: cannot publish to the response topic: {e}", job.request.id);
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
fn generate_png(ctx: &Ctx, maps: &Maps, params: &GenerationParams) -> Result<Vec<u8>, (ErrorCode, String)> {
    let image = ctx.generator.generate(maps, params).map_err(|e| {
        let code = match &e {
            GenerateError::Cond(_) => ErrorCode::InvalidMaps,
            GenerateError::Param(_) | GenerateError::Steps(_) => ErrorCode::InvalidParams,
            GenerateError::Model(_) => ErrorCode::ModelError,
            GenerateError::Inference(_) => ErrorCode::InferenceFailed,
        };
        (code, format!("generation failed: {e}"))
    })?;
    ctx.record_images(maps, &image);
    encode_png(&image).map_err(|e| (ErrorCode::EncodeFailed, format!("cannot encode the PNG: {e}")))
}

/// `s` cut to `max` characters, with a note of its full length when cut.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        None => s.into(),
        Some((end, _)) => format!("{}... ({} characters in all)", &s[..end], s.chars().count()).into(),
    }
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
    fn clip_cuts_long_text_only() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééééé", 2), "éé... (5 characters in all)");
    }
}
