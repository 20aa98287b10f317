//! [`Outbox`]: publishes answers and status and sends the acknowledgements of incoming publishes,
//! waiting for room in the request channel; shared (cloned) by the dispatcher, the worker and
//! `run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::state::lock;
use crate::mqtt::{Ack, AckQueue, Mqtt, MqttConfig, ReplyProps, Ticket, topic_text_ok};

/// How long a publish may wait for room in the request channel once stopping.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a publish or a subscription could not be queued.
#[derive(Debug, thiserror::Error)]
pub(super) enum PublishError {
    /// An empty topic, one with wildcards or with text MQTT refuses.
    #[error("invalid topic {0:?}")]
    InvalidTopic(String),
    /// The publish would exceed the packet size limit.
    #[error("{topic}: {size} bytes exceed mqtt.max_packet_bytes = {max}")]
    TooLarge { topic: String, size: usize, max: usize },
    /// The loop thread has ended.
    #[error("{0}: the MQTT event loop has stopped")]
    LoopStopped(String),
    /// Stopping, and the request channel stayed full.
    #[error("{0}: request channel still full after {grace:?}", grace = STOP_GRACE)]
    ChannelFull(String),
    /// The subscription could not be queued.
    #[error("cannot subscribe to {0:?}")]
    Subscribe(String),
}

/// Publishes answers and status; shared (cloned) by the dispatcher, the worker and `run`.
#[derive(Clone)]
pub(super) struct Outbox {
    mqtt: Mqtt,
    qos: u8,
    max_packet_bytes: usize,
    stopping: Arc<AtomicBool>,
    loop_alive: Arc<AtomicBool>,
    /// Acknowledgements of incoming publishes, released in arrival order.
    acks: Arc<Mutex<AckQueue>>,
}

impl Outbox {
    /// Publishes through `mqtt` at `[mqtt]` `qos` within `max_packet_bytes`; `stopping` and
    /// `loop_alive` bound the waits for room in the request channel.
    pub(super) fn new(mqtt: Mqtt, config: &MqttConfig, stopping: Arc<AtomicBool>, loop_alive: Arc<AtomicBool>) -> Self {
        Outbox { mqtt, qos: config.qos, max_packet_bytes: config.max_packet_bytes, stopping, loop_alive, acks: Arc::default() }
    }

    /// Queue a publish, waiting while the request channel is full (the loop thread drains it;
    /// once stopping, at most [`STOP_GRACE`]).
    pub(super) fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool, props: Option<ReplyProps<'_>>) -> Result<(), PublishError> {
        if topic.is_empty() || topic.contains(['+', '#']) || !topic_text_ok(topic) {
            return Err(PublishError::InvalidTopic(topic.to_string()));
        }
        let size = payload.len() + topic.len() + props.as_ref().and_then(|p| p.correlation).map_or(0, <[u8]>::len) + 64;
        if size > self.max_packet_bytes {
            return Err(PublishError::TooLarge { topic: topic.to_string(), size, max: self.max_packet_bytes });
        }
        let start = Instant::now();
        loop {
            if self.mqtt.try_publish(topic, self.qos, retain, payload.clone(), props.as_ref()) {
                return Ok(());
            }
            if !self.loop_alive.load(Ordering::SeqCst) {
                return Err(PublishError::LoopStopped(topic.to_string()));
            }
            if self.stopping.load(Ordering::SeqCst) && start.elapsed() > STOP_GRACE {
                return Err(PublishError::ChannelFull(topic.to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Queue the acknowledgement of a publish that just arrived (dispatcher only, in arrival order).
    pub(super) fn track(&self, ack: Ack) -> Ticket {
        lock(&self.acks).push(ack)
    }

    /// The publish of `ticket` has been handled: send its acknowledgement and those it held
    /// back, in arrival order (see [`AckQueue`]); waits for room in the request channel like
    /// [`Outbox::publish`]. The queue stays locked while sending, so that order holds.
    pub(super) fn ack(&self, ticket: Ticket) {
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

    /// Forget the previous connection's acknowledgements (on every CONNACK).
    pub(super) fn new_connection(&self) {
        lock(&self.acks).new_connection();
    }

    /// Queue a subscription to `filter`, waiting like [`Outbox::publish`].
    pub(super) fn subscribe(&self, filter: &str) -> Result<(), PublishError> {
        let start = Instant::now();
        while !self.mqtt.try_subscribe(filter, self.qos) {
            if !self.loop_alive.load(Ordering::SeqCst) || (self.stopping.load(Ordering::SeqCst) && start.elapsed() > STOP_GRACE) {
                return Err(PublishError::Subscribe(filter.to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

