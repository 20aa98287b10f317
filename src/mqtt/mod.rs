//! MQTT transport of the service: the `[mqtt]` section of `edge.toml` ([`MqttConfig`]), the
//! connection settings resolved from it ([`Settings`]: credentials, TLS with rustls), the topic
//! rules, one client handle for MQTT 3.1.1 and 5 (rumqttc), the in-order acknowledgements of
//! incoming publishes, and the loop thread that drives the connection and reconnects with
//! exponential backoff.
//!
//! The loop thread only forwards events (rumqttc pitfall: publishing from the thread that drives
//! the event loop can deadlock when the request channel fills); the service publishes through
//! cloned client handles.

mod acks;
mod client;
mod config;
mod event_loop;
mod settings;
mod topics;

pub(crate) use acks::{Ack, AckQueue, Ticket};
pub(crate) use client::{Content, Mqtt, OFFLINE, ReplyProps, ReplyTo, connect};
pub use config::{MqttConfig, MqttProtocol, Secret, TlsConfig, UnsupportedProtocol, UrlError};
pub(crate) use config::parse_url;
pub(crate) use event_loop::{Backoff, LoopCtx, LoopEvent};
pub use settings::{Settings, TransportError, tls_client_config};
pub(crate) use topics::topic_matches;
pub use topics::{topic_text_ok, valid_filter};
