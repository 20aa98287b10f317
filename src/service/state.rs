//! What the dispatcher, the workers and `run` share: the queue of accepted requests and pending
//! stream frames ([`Pending`]), the counters ([`Stats`]) and the context every thread holds
//! ([`Ctx`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use image::RgbImage;
use serde::Serialize;

use super::answers::AnswerCache;
use super::outbox::Outbox;
use super::request::Request;
use crate::config::EdgeConfig;
use crate::contract::Maps;
use crate::diffusion::ImageGenerator;
use crate::display::StatusDisplay;
use crate::frames::FrameLimits;
use crate::mqtt::{Mqtt, ReplyTo, Ticket};

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
    /// Duplicate deliveries of a request id still pending, ignored (its one answer follows).
    pub duplicates_ignored: u64,
    /// Requests answered again from the answer cache (retries of an id answered recently).
    pub replays: u64,
}

/// An accepted request waiting for the worker.
pub(super) struct Job {
    pub(super) request: Request,
    pub(super) reply: Option<ReplyTo>,
    /// Its acknowledgement, sent once the request has been answered.
    pub(super) ack: Option<Ticket>,
}

/// Work waiting for the workers, and what they are doing.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) requests: VecDeque<Job>,
    /// Latest undecoded stream frame per modality.
    pub(super) frames: BTreeMap<String, Vec<u8>>,
    /// Workers generating now (`[runtime] workers` at most).
    pub(super) busy: usize,
    /// A worker is generating from stream frames: one at a time, so that stream images go out in
    /// the order of their frames.
    pub(super) frames_running: bool,
    /// The requests being generated: their ids and acknowledgements, each sent once its request
    /// is answered (released in arrival order by the transport's ack queue).
    pub(super) running: Vec<(String, Option<Ticket>)>,
}

impl Pending {
    /// The acknowledgement slot of request `id` while it is queued or being generated.
    pub(super) fn ack_slot(&mut self, id: &str) -> Option<&mut Option<Ticket>> {
        let queued = self.requests.iter_mut().find(|j| j.request.id == id).map(|j| &mut j.ack);
        queued.or_else(|| self.running.iter_mut().find(|r| r.0 == id).map(|r| &mut r.1))
    }
}

/// Counters and the latest pictures, for the status and the display.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) summary: ServiceSummary,
    pub(super) last_latency_ms: Option<u64>,
    /// Pictures of the last input map and the last output, for the status display.
    pub(super) last_input: Option<RgbImage>,
    pub(super) last_output: Option<RgbImage>,
}

/// The state behind every [`Ctx`] clone.
pub(super) struct Shared {
    pub(super) pending: Mutex<Pending>,
    /// The latest decoded map of every modality from stream frames (what stream images are
    /// generated from; used by the one worker generating from frames at a time).
    pub(super) latest: Mutex<Maps>,
    pub(super) wake: Condvar,
    pub(super) stats: Mutex<Stats>,
    /// Recent answers, for retried request ids.
    pub(super) answers: Mutex<AnswerCache>,
    /// Held while a status is built and queued, so that statuses go out in order.
    pub(super) status_order: Mutex<()>,
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) seed_counter: AtomicU64,
    /// The last status display write failed (logged once).
    pub(super) display_failing: AtomicBool,
}

/// Lock `m`, also after a panic of another holder.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything the dispatcher and the worker need.
#[derive(Clone)]
pub(super) struct Ctx {
    pub(super) generator: Arc<dyn ImageGenerator>,
    pub(super) config: Arc<EdgeConfig>,
    pub(super) prefix: String,
    pub(super) model_id: String,
    pub(super) out: Outbox,
    pub(super) shared: Arc<Shared>,
    pub(super) loop_alive: Arc<AtomicBool>,
    /// Whether the broker connection is up (set by the loop thread).
    pub(super) connected: Arc<AtomicBool>,
    pub(super) display: Arc<Mutex<StatusDisplay>>,
}

impl Ctx {
    /// The context of a service run on `config` (shared by every thread through clones).
    pub(super) fn new(config: &EdgeConfig, generator: Arc<dyn ImageGenerator>, mqtt: Mqtt, prefix: String, display: StatusDisplay) -> Ctx {
        let loop_alive = Arc::new(AtomicBool::new(true));
        let stopping = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            latest: Mutex::new(Maps::new()),
            wake: Condvar::new(),
            stats: Mutex::new(Stats::default()),
            answers: Mutex::new(AnswerCache::new(config.limits.answer_cache_bytes, config.limits.recent_ids)),
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
        let out = Outbox::new(mqtt, &config.mqtt, stopping, Arc::clone(&loop_alive));
        let connected = Arc::new(AtomicBool::new(false));
        let display = Arc::new(Mutex::new(display));
        Ctx { generator, config: Arc::new(config.clone()), prefix, model_id, out, shared, loop_alive, connected, display }
    }

    /// Whether the service is stopping.
    pub(super) fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    /// The counters so far.
    pub(super) fn summary(&self) -> ServiceSummary {
        lock(&self.shared.stats).summary.clone()
    }

    /// The frame limits of `[limits]`.
    pub(super) fn frame_limits(&self) -> FrameLimits {
        let l = &self.config.limits;
        FrameLimits { max_bytes: l.max_payload_bytes, max_pixels: l.max_pixels, max_far_share: l.max_far_share }
    }
}
