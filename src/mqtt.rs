//! MQTT transport of the service: one handle for MQTT 3.1.1 and 5 (rumqttc), the connection
//! settings (credentials, TLS with rustls, last will, persistent session, packet size), and the
//! loop thread that drives the connection and reconnects with exponential backoff.
//!
//! The loop thread only forwards events (rumqttc pitfall: publishing from the thread that drives
//! the event loop can deadlock when the request channel fills); the service publishes through
//! cloned [`Mqtt`] handles.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{EdgeConfig, MqttProtocol, TlsConfig};

/// Capacity of the rumqttc request channel (publishes waiting for the event loop).
const CHANNEL_CAPACITY: usize = 64;
/// How often the loop thread looks at its stop flag while waiting to reconnect.
const TICK: Duration = Duration::from_millis(50);
/// Payload of the last will and of the final status.
pub(crate) const OFFLINE: &[u8] = br#"{"state":"offline"}"#;

/// Whether `s` may stand in an MQTT topic as text: no NUL, no control characters (U+0001-U+001F,
/// U+007F-U+009F) and no Unicode non-characters. MQTT forbids or discourages them (3.1.1 section
/// 1.5.3, MQTT 5 section 1.5.4) and mosquitto closes the connection of a client that publishes to
/// such a topic. Wildcards are checked separately.
pub fn topic_text_ok(s: &str) -> bool {
    s.chars().all(|c| {
        let u = c as u32;
        !c.is_control() && !(0xFDD0..=0xFDEF).contains(&u) && u & 0xFFFE != 0xFFFE
    })
}

/// Errors preparing the connection (before anything is sent).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `mqtt.url` is malformed.
    #[error("mqtt.url: {0}")]
    Url(String),
    /// A credential or TLS file could not be read.
    #[error("{key} = {path}: cannot read: {source}")]
    Read { key: &'static str, path: PathBuf, source: std::io::Error },
    /// A TLS file holds no usable PEM item, or rustls refused it.
    #[error("{key} = {path}: {message}")]
    Tls { key: &'static str, path: PathBuf, message: String },
    /// The TLS client configuration could not be built.
    #[error("mqtt.tls: {0}")]
    TlsSetup(String),
}

/// Everything needed to connect, resolved and checked from an [`EdgeConfig`] by
/// [`Settings::from_config`]: files are read here, so a bad file stops the service at start.
#[derive(Clone)]
pub struct Settings {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker TCP port.
    pub port: u16,
    /// User name and password, when configured.
    credentials: Option<(String, String)>,
    /// rustls client configuration, when TLS is on.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Settings {
    /// Resolve the broker address, read the password file and build the TLS configuration.
    ///
    /// # Errors
    /// [`TransportError`] naming the key and file that failed.
    pub fn from_config(config: &EdgeConfig) -> Result<Settings, TransportError> {
        let (host, port) = config.broker_address().map_err(TransportError::Url)?;
        let m = &config.mqtt;
        let password = match (&m.password, &m.password_file) {
            (Some(p), _) => p.0.clone(),
            (None, Some(path)) => read_file("mqtt.password_file", path).map(|b| {
                let text = String::from_utf8_lossy(&b).into_owned();
                text.trim_end_matches(['\r', '\n']).to_string()
            })?,
            (None, None) => String::new(),
        };
        let credentials = m.username.clone().map(|user| (user, password));
        let tls = config.tls().as_ref().map(tls_client_config).transpose()?;
        Ok(Settings { host, port, credentials, tls })
    }

    /// Whether the connection uses TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read { key, path: path.to_path_buf(), source })
}

/// Build a rustls client configuration (ring provider) from `[mqtt.tls]`: the CA file or the
/// system roots, and the optional client certificate and key.
///
/// # Errors
/// [`TransportError::Read`] / [`TransportError::Tls`] naming the file; [`TransportError::TlsSetup`]
/// when no root certificate is available.
pub fn tls_client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for cert in pem_certs("mqtt.tls.ca_file", path)? {
                roots.add(cert).map_err(|e| TransportError::Tls { key: "mqtt.tls.ca_file", path: path.clone(), message: e.to_string() })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(TransportError::TlsSetup("no system root certificates found: set mqtt.tls.ca_file".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::TlsSetup(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = pem_certs("mqtt.tls.client_cert_file", cert)?;
            let bytes = read_file("mqtt.tls.client_key_file", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TransportError::Tls {
                key: "mqtt.tls.client_key_file",
                path: key.clone(),
                message: format!("no usable private key: {e}"),
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| TransportError::Tls {
                key: "mqtt.tls.client_key_file",
                path: key.clone(),
                message: format!("does not match the client certificate: {e}"),
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// All certificates of a PEM file; an error when there is none.
fn pem_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read_file(key, path)?;
    let bad = |message: String| TransportError::Tls { key, path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 / 5 behind one small enum.

/// A cloneable handle that publishes and subscribes, for either protocol version.
#[derive(Clone)]
pub(crate) enum Mqtt {
    V4(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

/// The `Connection` of either protocol version, driven by the loop thread.
pub(crate) enum Driver {
    V4(Box<rumqttc::Connection>),
    V5(Box<rumqttc::v5::Connection>),
}

/// What the payload is (sent as the MQTT 5 content type of response-topic publishes).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Content {
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

/// Create the client handle and its (not yet connected) event loop: last will = offline status
/// (retained), persistent session unless `mqtt.clean_session`, packet size limits, credentials
/// and TLS from `settings`.
pub(crate) fn connect(config: &EdgeConfig, settings: &Settings, status_topic: &str) -> (Mqtt, Driver) {
    let m = &config.mqtt;
    let transport = || match &settings.tls {
        Some(tls) => rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::clone(tls))),
        None => rumqttc::Transport::Tcp,
    };
    match m.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(config.client_id(), &settings.host, settings.port);
            o.set_keep_alive(config.keep_alive())
                .set_max_packet_size(m.max_packet_bytes, m.max_packet_bytes)
                .set_clean_session(m.clean_session)
                .set_manual_acks(true)
                .set_transport(transport())
                .set_last_will(rumqttc::LastWill::new(status_topic, OFFLINE.to_vec(), qos4(m.qos), true));
            if let Some((user, password)) = &settings.credentials {
                o.set_credentials(user.clone(), password.clone());
            }
            let (client, connection) = rumqttc::Client::new(o, CHANNEL_CAPACITY);
            (Mqtt::V4(client), Driver::V4(Box::new(connection)))
        }
        MqttProtocol::V5 => {
            use rumqttc::v5::mqttbytes::v5::LastWill;
            let mut o = rumqttc::v5::MqttOptions::new(config.client_id(), &settings.host, settings.port);
            // The maximum packet size goes to the broker in CONNECT: a conforming broker then
            // never sends a larger message (it drops it), so one cannot block the session.
            o.set_keep_alive(config.keep_alive())
                .set_max_packet_size(Some(u32::try_from(m.max_packet_bytes).unwrap_or(u32::MAX)))
                .set_clean_start(m.clean_session)
                .set_manual_acks(true)
                .set_transport(transport())
                .set_last_will(LastWill::new(status_topic, OFFLINE.to_vec(), qos5(m.qos), true, None));
            if !m.clean_session {
                o.set_session_expiry_interval(Some(m.session_expiry_s));
            }
            if let Some((user, password)) = &settings.credentials {
                o.set_credentials(user.clone(), password.clone());
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
    pub(crate) fn try_publish(&self, topic: &str, qos: u8, retain: bool, payload: Vec<u8>, props: Option<&ReplyProps<'_>>) -> bool {
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

    pub(crate) fn try_subscribe(&self, filter: &str, qos: u8) -> bool {
        match self {
            Mqtt::V4(c) => c.try_subscribe(filter, qos4(qos)).is_ok(),
            Mqtt::V5(c) => c.try_subscribe(filter, qos5(qos)).is_ok(),
        }
    }

    /// Queue the acknowledgement of an incoming publish; false when the channel is full or closed.
    pub(crate) fn try_ack(&self, ack: &Ack) -> bool {
        match (self, ack) {
            (Mqtt::V4(c), Ack::V4(p)) => c.try_ack(p).is_ok(),
            (Mqtt::V5(c), Ack::V5(p)) => c.try_ack(p).is_ok(),
            _ => true, // cannot happen: one protocol per service
        }
    }

    pub(crate) fn disconnect(&self) {
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
pub(crate) struct ReplyTo {
    pub(crate) topic: String,
    pub(crate) correlation: Option<Vec<u8>>,
}

impl ReplyTo {
    pub(crate) fn props(&self, content: Content) -> ReplyProps<'_> {
        ReplyProps { content, correlation: self.correlation.as_deref() }
    }
}

/// MQTT 5 properties of a publish to a response topic.
pub(crate) struct ReplyProps<'a> {
    content: Content,
    pub(crate) correlation: Option<&'a [u8]>,
}

/// The acknowledgement (PUBACK / PUBREC) of an incoming publish, held until the message has been
/// handled (manual acks): a request the device has not answered when it crashes or loses power
/// stays unacknowledged, and the broker delivers it again to the restarted device (persistent
/// session). No-op for QoS 0.
pub(crate) enum Ack {
    V4(Box<rumqttc::Publish>),
    V5(Box<rumqttc::v5::mqttbytes::v5::Publish>),
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pkid = match self {
            Ack::V4(p) => p.pkid,
            Ack::V5(p) => p.pkid,
        };
        write!(f, "Ack(pkid {pkid})")
    }
}

/// A place in the [`AckQueue`]: the connection it came from and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    connection: u64,
    seq: u64,
}

/// Acknowledgements released in the order the publishes arrived, as MQTT requires (3.1.1 and 5,
/// section 4.6; rumqttd drops a connection that acknowledges out of order): a message handled
/// early (a frame, a refusal) waits for the requests that arrived before it.
///
/// A new connection starts a new queue: the broker redelivers what was not acknowledged on the
/// old one, so its tickets are void.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    connection: u64,
    /// Sequence number of `entries[0]`.
    first: u64,
    /// Not yet released, in arrival order; `true` once handled.
    entries: std::collections::VecDeque<(Ack, bool)>,
}

impl AckQueue {
    /// Forget the previous connection's acknowledgements (call on every CONNACK).
    pub(crate) fn new_connection(&mut self) {
        self.connection += 1;
        self.first = 0;
        self.entries.clear();
    }

    /// Queue the ack of a publish that just arrived.
    pub(crate) fn push(&mut self, ack: Ack) -> Ticket {
        self.entries.push_back((ack, false));
        Ticket { connection: self.connection, seq: self.first + self.entries.len() as u64 - 1 }
    }

    /// Mark `ticket` handled; returns the acks that may be sent now, in order.
    pub(crate) fn done(&mut self, ticket: Ticket) -> Vec<Ack> {
        if ticket.connection != self.connection || ticket.seq < self.first {
            return Vec::new();
        }
        if let Some(entry) = self.entries.get_mut((ticket.seq - self.first) as usize) {
            entry.1 = true;
        }
        let mut ready = Vec::new();
        while self.entries.front().is_some_and(|e| e.1) {
            ready.extend(self.entries.pop_front().map(|e| e.0));
            self.first += 1;
        }
        ready
    }
}

/// What the loop thread forwards to the service.
pub(crate) enum LoopEvent {
    /// A CONNACK: subscriptions and status must be renewed.
    Connected { session_present: bool },
    /// An incoming publish, to be acknowledged with `ack` once handled.
    Message { topic: String, payload: Vec<u8>, reply: Option<ReplyTo>, ack: Ack },
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
    fn topic_text_refuses_controls_and_noncharacters() {
        assert!(topic_text_ok("mcm/edge-1/image/tablet-42 é✓"));
        for bad in ["a\nb", "a\tb", "\u{1b}", "\u{7f}", "\u{85}", "\u{fdd0}", "\u{ffff}", "\u{1fffe}", "\0"] {
            assert!(!topic_text_ok(bad), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let ms: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    fn ack(pkid: u16) -> Ack {
        let mut p = rumqttc::Publish::new("t", rumqttc::QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        Ack::V4(Box::new(p))
    }

    fn pkids(acks: Vec<Ack>) -> Vec<u16> {
        acks.into_iter().map(|a| if let Ack::V4(p) = a { p.pkid } else { 0 }).collect()
    }

    #[test]
    fn acks_leave_in_arrival_order_and_die_with_their_connection() {
        let mut q = AckQueue::default();
        let (a, b, c) = (q.push(ack(1)), q.push(ack(2)), q.push(ack(3)));
        assert!(pkids(q.done(b)).is_empty(), "2 waits for 1");
        assert!(pkids(q.done(c)).is_empty());
        assert_eq!(pkids(q.done(a)), [1, 2, 3]);
        let d = q.push(ack(4));
        q.new_connection();
        assert!(pkids(q.done(d)).is_empty(), "a ticket of an old connection is void");
        let e = q.push(ack(5));
        assert_eq!(pkids(q.done(e)), [5]);
    }

    #[test]
    fn missing_tls_files_are_named() {
        let tls = TlsConfig { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let e = tls_client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("mqtt.tls.ca_file") && e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("mcm-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let tls = TlsConfig { ca_file: Some(path.clone()), ..Default::default() };
        let e = tls_client_config(&tls).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn password_file_is_read_without_its_newline_and_never_debug_printed() {
        let dir = std::env::temp_dir().join(format!("mcm-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut config = EdgeConfig::default();
        config.mqtt.username = Some("dev".into());
        config.mqtt.password_file = Some(path);
        let s = Settings::from_config(&config).unwrap();
        assert_eq!(s.credentials, Some(("dev".into(), "s3cret".into())));
        config.mqtt.password_file = None;
        config.mqtt.password = Some(crate::config::Secret("hunter2".into()));
        assert!(!format!("{config:?}").contains("hunter2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
