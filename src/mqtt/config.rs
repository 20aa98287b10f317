//! `[mqtt]` of `edge.toml` ([`MqttConfig`], [`TlsConfig`]): broker address, identity, topics,
//! protocol, session and reconnection settings, as parsed; [`super::Settings`] resolves them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One mebibyte in bytes.
const MIB: usize = 1024 * 1024;

/// MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum MqttProtocol {
    /// MQTT 3.1.1 (`protocol = 3`; the wire protocol level 4 is accepted as well).
    V311,
    /// MQTT 5 (`protocol = 5`): response topics and correlation data are honoured.
    V5,
}

/// A `protocol` other than 3, 4 (MQTT 3.1.1) or 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("protocol {0} is not supported: use 3 (MQTT 3.1.1) or 5 (MQTT 5)")]
pub struct UnsupportedProtocol(pub u8);

impl TryFrom<u8> for MqttProtocol {
    type Error = UnsupportedProtocol;
    fn try_from(v: u8) -> Result<Self, UnsupportedProtocol> {
        match v {
            3 | 4 => Ok(MqttProtocol::V311),
            5 => Ok(MqttProtocol::V5),
            _ => Err(UnsupportedProtocol(v)),
        }
    }
}

impl From<MqttProtocol> for u8 {
    fn from(p: MqttProtocol) -> u8 {
        match p {
            MqttProtocol::V311 => 3,
            MqttProtocol::V5 => 5,
        }
    }
}

/// `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker TCP port.
    pub port: u16,
    /// `mqtt://host:port` or `tcp://host:port`; when set it overrides `host` and `port`.
    pub url: Option<String>,
    /// Identifier of this device; used in the default client id and topic prefix. No `/`, `+`, `#`.
    pub device_id: String,
    /// MQTT client id; default `mcm-edge-<device_id>`.
    pub client_id: Option<String>,
    /// Prefix of every topic; default `mcm/<device_id>/`. A missing trailing `/` is added.
    pub topic_prefix: Option<String>,
    /// Filter subscribed for requests instead of `<prefix>request`, e.g. an MQTT 5 shared
    /// subscription `$share/edge/mcm/+/request` so that many devices share one request stream.
    pub request_filter: Option<String>,
    /// Protocol version: 3 (MQTT 3.1.1) or 5.
    pub protocol: MqttProtocol,
    /// Keep-alive interval in seconds (at least 5).
    pub keep_alive_s: u64,
    /// Largest MQTT packet accepted or sent, in bytes (rumqttc's own default is only 10 KiB).
    pub max_packet_bytes: usize,
    /// QoS of the subscriptions and of every publish (0, 1 or 2).
    pub qos: u8,
    /// `false` keeps the broker session (subscriptions, queued QoS>0 requests) across reconnects
    /// and restarts; `true` starts clean every time (subscriptions are renewed on every CONNACK
    /// either way).
    pub clean_session: bool,
    /// MQTT 5 only: how long the broker keeps the session after a disconnect, in seconds, when
    /// `clean_session = false`.
    pub session_expiry_s: u32,
    /// First pause before reconnecting, in milliseconds; it doubles after every failed attempt
    /// up to `reconnect_max_delay_ms` and starts again from here after a CONNACK.
    pub reconnect_delay_ms: u64,
    /// Longest pause between reconnection attempts, in milliseconds.
    pub reconnect_max_delay_ms: u64,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password (only with `username`); prefer `password_file`, which keeps the secret
    /// out of the configuration file. Never logged.
    pub password: Option<Secret>,
    /// File holding the password (only with `username`; one line, a trailing newline is ignored),
    /// e.g. a systemd credential. Read at start.
    pub password_file: Option<PathBuf>,
    /// `[mqtt.tls]`: present = connect with TLS (rustls).
    pub tls: Option<TlsConfig>,
}

/// `[mqtt.tls]` section: TLS to the broker (rustls with the ring provider; TLS 1.2 and 1.3).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate; default: the
    /// system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for brokers that require one (`require_certificate true` in
    /// mosquitto); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`. Never logged.
    pub client_key_file: Option<PathBuf>,
}

/// A secret string (a password): shown as `"***"` by `Debug` so that it never reaches a log.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            url: None,
            device_id: "edge-1".into(),
            client_id: None,
            topic_prefix: None,
            request_filter: None,
            protocol: MqttProtocol::V311,
            keep_alive_s: 30,
            max_packet_bytes: 16 * MIB,
            qos: 1,
            clean_session: false,
            session_expiry_s: 3600,
            reconnect_delay_ms: 500,
            reconnect_max_delay_ms: 30_000,
            username: None,
            password: None,
            password_file: None,
            tls: None,
        }
    }
}

impl MqttConfig {
    /// The topic prefix, ending in `/`: `mqtt.topic_prefix` or `mcm/<device_id>/`.
    pub fn topic_prefix(&self) -> String {
        match &self.topic_prefix {
            Some(p) if p.is_empty() || p.ends_with('/') => p.clone(),
            Some(p) => format!("{p}/"),
            None => format!("mcm/{}/", self.device_id),
        }
    }

    /// The MQTT client id: `mqtt.client_id` or `mcm-edge-<device_id>`.
    pub fn client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("mcm-edge-{}", self.device_id))
    }

    /// Broker `(host, port)` from `mqtt.url` when set, else `mqtt.host` and `mqtt.port`.
    ///
    /// # Errors
    /// [`UrlError`] when `mqtt.url` is malformed (never after the configuration was checked:
    /// `EdgeConfig::validate`).
    pub fn broker_address(&self) -> Result<(String, u16), UrlError> {
        match &self.url {
            Some(url) => parse_url(url).map(|(host, port, _)| (host, port)),
            None => Ok((self.host.clone(), self.port)),
        }
    }

    /// TLS settings when the connection uses TLS: the `[mqtt.tls]` section, or the defaults
    /// (system roots) for an `mqtts://` URL without that section; `None` for plain TCP.
    pub fn tls(&self) -> Option<TlsConfig> {
        let mqtts = self.url.as_deref().is_some_and(|u| u.starts_with("mqtts://"));
        self.tls.clone().or_else(|| mqtts.then(TlsConfig::default))
    }

    /// Keep-alive interval.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_s)
    }
}

/// A malformed `mqtt.url`; each names the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A scheme other than `mqtt://`, `tcp://` and `mqtts://`.
    #[error("{url:?}: only mqtt://, tcp:// and mqtts:// URLs are supported")]
    Scheme { url: String },
    /// A path, query or credentials after the address.
    #[error("{url:?}: expected mqtt://host[:port] without path, query or credentials")]
    NotAnAddress { url: String },
    /// An IPv6 address without its closing `]`.
    #[error("{url:?}: unclosed '['")]
    UnclosedBracket { url: String },
    /// No host name.
    #[error("{url:?}: missing host")]
    NoHost { url: String },
    /// A port that is not a number in 0..=65535.
    #[error("{url:?}: bad port {port:?}")]
    Port { url: String, port: String },
}

/// `mqtt://host[:port][/]`, `tcp://host[:port]` (default port 1883) or `mqtts://host[:port]`
/// (TLS, default port 8883) -> `(host, port, tls)`.
pub(crate) fn parse_url(url: &str) -> Result<(String, u16, bool), UrlError> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (rest, true)
    } else {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| UrlError::Scheme { url: url.to_string() })?;
        (rest, false)
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains(['/', '?', '@']) {
        return Err(UrlError::NotAnAddress { url: url.to_string() });
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        // [::1]:1883
        let (h, after) = v6.split_once(']').ok_or_else(|| UrlError::UnclosedBracket { url: url.to_string() })?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost { url: url.to_string() });
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| UrlError::Port { url: url.to_string(), port: p.to_string() })?,
        None if tls => 8883,
        None => 1883,
    };
    Ok((host, port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("mqtt://broker.local").unwrap(), ("broker.local".into(), 1883, false));
        assert_eq!(parse_url("tcp://10.0.0.2:1884/").unwrap(), ("10.0.0.2".into(), 1884, false));
        assert_eq!(parse_url("mqtt://[::1]:1999").unwrap(), ("::1".into(), 1999, false));
        assert_eq!(parse_url("mqtts://b").unwrap(), ("b".into(), 8883, true));
        assert!(parse_url("ws://x").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
    }
}
