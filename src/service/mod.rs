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
//!   is full the answer is the error `queue_full`. A duplicate of an id still pending gets no
//!   second answer (its one answer is on the way); an id answered recently gets the same answer
//!   again from the answer cache (idempotent retries, counted as replays), an older one is
//!   generated again.
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
//! Incoming publishes are acknowledged once handled, in arrival order (the transport's ack
//! queue): a request when it has been answered, a frame or a refusal on arrival (after the
//! requests before it). The status display, when configured, is redrawn from the same state.
//!
//! Error codes: [`crate::error_code::ErrorCode`] (requests: [`request`]; frames:
//! [`crate::frames::FrameError::code`]).
//!
//! Parts: `run` (start, supervision, shutdown), `outbox` (publishing and acknowledging),
//! `state` (what the threads share), `status` (`P/status` and the status display), `errors`
//! (`P/error`), `answers` (publishing answers, the answer cache for retries), `page` (the
//! tablet page's `config.json` and URL), `home_assistant` (MQTT discovery), `dispatch` (incoming messages), `worker` (generation and answers), [`request`]
//! (request JSON).

mod answers;
mod dispatch;
mod errors;
mod home_assistant;
mod outbox;
mod page;
pub mod request;
pub use page::{page_config, public_url};
mod run;
mod state;
mod status;
mod worker;

use std::time::Duration;

pub use run::{ServiceError, run, shutdown_on_signals};
pub use state::ServiceSummary;

/// How often the threads look at the stop flags.
const TICK: Duration = Duration::from_millis(50);
