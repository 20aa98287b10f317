//! The loop thread: drives the rumqttc connection of either protocol ([`Driver`]), forwards its
//! events to the service ([`LoopEvent`]) and reconnects with exponential backoff ([`Backoff`]).
//!
//! The loop thread only forwards events (rumqttc pitfall: publishing from the thread that drives
//! the event loop can deadlock when the request channel fills); the service publishes through
//! cloned [`super::Mqtt`] handles.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::acks::Ack;
use super::client::ReplyTo;

/// How often the loop thread looks at its stop flag while waiting to reconnect.
const TICK: Duration = Duration::from_millis(50);

/// The `Connection` of either protocol version, driven by the loop thread.
pub(crate) enum Driver {
    V4(Box<rumqttc::Connection>),
    V5(Box<rumqttc::v5::Connection>),
}

/// What the loop thread forwards to the service.
pub(crate) enum LoopEvent {
    /// A CONNACK: subscriptions and status must be renewed.
    Connected { session_present: bool },
    /// An incoming publish, to be acknowledged with `ack` once handled. `redelivered`: the
    /// broker's DUP flag, set when it sends a QoS 1/2 publish again because its acknowledgement
    /// did not arrive (e.g. after a reconnect); a client's own retry is a new publish without it.
    Message { topic: String, payload: Vec<u8>, reply: Option<ReplyTo>, ack: Ack, redelivered: bool },
    /// The broker sent a message larger than `mqtt.max_packet_bytes` (dropped unread).
    Oversized { bytes: usize, max: usize },
}

/// Reconnection pauses: `first`, doubling after every failure up to `max`; [`Backoff::reset`]
/// after a CONNACK.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max: max.max(first), next: first }
    }

    /// The pause before the next attempt (and double the one after it).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// What the loop thread shares with the service.
pub(crate) struct LoopCtx {
    pub(crate) tx: Sender<LoopEvent>,
    /// Set by the service to end the loop (after the queued DISCONNECT went out).
    pub(crate) stop: Arc<AtomicBool>,
    /// Cleared when the loop thread ends, even by a panic.
    pub(crate) alive: Arc<AtomicBool>,
    /// Whether the broker connection is up (CONNACK seen, no error since).
    pub(crate) connected: Arc<AtomicBool>,
    pub(crate) backoff: Backoff,
    /// `mqtt.clean_session`, restored after a one-off clean session (see [`Driver::drive`]).
    pub(crate) clean_session: bool,
}

/// Clears a flag when dropped: marks the loop thread dead even when it panics.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What one poll of either event loop gave.
enum Polled {
    Event(Option<LoopEvent>),
    Disconnected,
    /// An incoming packet above the size limit (rumqttc closes the connection).
    Oversized { bytes: usize, max: usize },
    Error(String),
    Closed,
}

impl Driver {
    /// Drive the connection until stopped: forwards events, never publishes (see the module docs).
    ///
    /// On a connection error it waits the next [`Backoff`] pause and lets rumqttc reconnect;
    /// QoS > 0 publishes not yet acknowledged are sent again on the new connection.
    ///
    /// A message larger than `mqtt.max_packet_bytes` would be redelivered by the broker on every
    /// reconnect of a persistent session and keep the device offline; the next connection is
    /// therefore made with a clean session (which drops it, with whatever else the broker had
    /// queued for the device) and the configured session mode is restored after its CONNACK.
    /// MQTT 5 brokers are told the limit in CONNECT and do not send such messages.
    pub(crate) fn drive(mut self, mut ctx: LoopCtx) {
        let _alive = ClearOnDrop(Arc::clone(&ctx.alive));
        let _connected = ClearOnDrop(Arc::clone(&ctx.connected));
        let mut failures = 0u32;
        let mut stop_seen: Option<Instant> = None;
        loop {
            match self.poll() {
                Polled::Event(Some(event)) => {
                    if let LoopEvent::Connected { session_present } = &event {
                        log::info!("connected to the broker (session present: {session_present})");
                        failures = 0;
                        ctx.backoff.reset();
                        ctx.connected.store(true, Ordering::SeqCst);
                        self.set_clean_session(ctx.clean_session);
                    }
                    if ctx.tx.send(event).is_err() {
                        log::debug!("service gone; dropping an incoming event");
                    }
                }
                Polled::Event(None) => {}
                Polled::Disconnected | Polled::Closed => break,
                Polled::Oversized { bytes, max } => {
                    log::error!(
                        "the broker sent a {bytes}-byte message, above mqtt.max_packet_bytes = {max}; reconnecting with a \
                         clean session to drop it (set the broker's message size limit to avoid this)"
                    );
                    self.set_clean_session(true);
                    ctx.connected.store(false, Ordering::SeqCst);
                    let _ = ctx.tx.send(LoopEvent::Oversized { bytes, max });
                    failures += 1;
                    if !wait_or_stop(&ctx, ctx.backoff.first) {
                        break;
                    }
                }
                Polled::Error(e) => {
                    ctx.connected.store(false, Ordering::SeqCst);
                    if ctx.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    failures += 1;
                    let delay = ctx.backoff.next_delay();
                    if failures == 1 {
                        log::warn!("MQTT connection: {e}; reconnecting (backoff from {delay:?} up to {:?})", ctx.backoff.max);
                    } else {
                        log::debug!("MQTT connection: {e} (attempt {failures}, next in {delay:?})");
                    }
                    if !wait_or_stop(&ctx, delay) {
                        break;
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

    fn set_clean_session(&mut self, clean: bool) {
        match self {
            Driver::V4(conn) => {
                conn.eventloop.mqtt_options.set_clean_session(clean);
            }
            Driver::V5(conn) => {
                conn.eventloop.options.set_clean_start(clean);
            }
        }
    }

    fn poll(&mut self) -> Polled {
        match self {
            Driver::V4(conn) => {
                use rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded;
                use rumqttc::{ConnectionError, Event, Outgoing, Packet, StateError};
                match conn.recv() {
                    Err(_) => Polled::Closed,
                    Ok(Err(ConnectionError::MqttState(StateError::Deserialization(PayloadSizeLimitExceeded(bytes))))) => {
                        Polled::Oversized { bytes, max: conn.eventloop.mqtt_options.max_packet_size() }
                    }
                    Ok(Err(e)) => Polled::Error(e.to_string()),
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        Polled::Event(Some(LoopEvent::Connected { session_present: ack.session_present }))
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(mut p)))) => Polled::Event(Some(LoopEvent::Message {
                        topic: p.topic.clone(),
                        // The ack needs only the packet id and QoS: leave it without the payload.
                        payload: std::mem::take(&mut p.payload).to_vec(),
                        reply: None,
                        redelivered: p.dup,
                        ack: Ack::V4(Box::new(p)),
                    })),
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => Polled::Disconnected,
                    Ok(Ok(_)) => Polled::Event(None),
                }
            }
            Driver::V5(conn) => {
                use rumqttc::Outgoing;
                use rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded;
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::{ConnectionError, Event, StateError};
                match conn.recv() {
                    Err(_) => Polled::Closed,
                    Ok(Err(ConnectionError::MqttState(StateError::Deserialization(PayloadSizeLimitExceeded { pkt_size, max })))) => {
                        Polled::Oversized { bytes: pkt_size, max: max as usize }
                    }
                    Ok(Err(e)) => Polled::Error(e.to_string()),
                    Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
                        Polled::Event(Some(LoopEvent::Connected { session_present: ack.session_present }))
                    }
                    Ok(Ok(Event::Incoming(Packet::Publish(mut p)))) => {
                        let reply = p.properties.as_ref().and_then(|props| {
                            props.response_topic.as_ref().map(|topic| ReplyTo {
                                topic: topic.clone(),
                                correlation: props.correlation_data.as_ref().map(|c| c.to_vec()),
                            })
                        });
                        Polled::Event(Some(LoopEvent::Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: std::mem::take(&mut p.payload).to_vec(),
                            reply,
                            redelivered: p.dup,
                            ack: Ack::V5(Box::new(p)),
                        }))
                    }
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => Polled::Disconnected,
                    Ok(Ok(_)) => Polled::Event(None),
                }
            }
        }
    }
}

/// Sleep `delay` in ticks; false when the stop flag was raised meanwhile.
fn wait_or_stop(ctx: &LoopCtx, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        if ctx.stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(TICK.min(delay));
    }
    !ctx.stop.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let ms: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

}
