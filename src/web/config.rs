//! `[web]`: whether and where the device serves the tablet page, and the broker WebSocket URL
//! the page should use.

use serde::{Deserialize, Serialize};

/// `[web]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the page (default false for `run`; `demo` serves it unless `--no-serve`).
    pub enabled: bool,
    /// `HOST:PORT` the HTTP server binds, e.g. `0.0.0.0:8080` (all interfaces, for tablets on the
    /// network) or `127.0.0.1:8080` (this machine only); port 0 picks a free one.
    pub listen: String,
    /// Full `ws://` or `wss://` URL of the broker's MQTT-over-WebSocket listener as the page's
    /// browser reaches it, e.g. `wss://broker.local:9443/mqtt`. Default: the page's own host name
    /// with `broker_ws_port` and `broker_ws_path` (`wss` when the page is served over https).
    pub broker_url: Option<String>,
    /// Port of the broker's WebSocket listener when `broker_url` is not given (mosquitto:
    /// `listener 9001` + `protocol websockets`).
    pub broker_ws_port: u16,
    /// Path of the WebSocket endpoint when `broker_url` is not given (mosquitto accepts any).
    pub broker_ws_path: String,
    /// The page's URL as users reach it, for Home Assistant's `configuration_url` (default:
    /// `http://<host name>:<port of listen>/`).
    pub public_url: Option<String>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: false,
            listen: "0.0.0.0:8080".into(),
            broker_url: None,
            broker_ws_port: 9001,
            broker_ws_path: "/mqtt".into(),
            public_url: None,
        }
    }
}

impl WebConfig {
    /// Check the values; the message names the key.
    ///
    /// # Errors
    /// A `listen` that is not `HOST:PORT`, a `broker_url` that is not `ws://` or `wss://`, a
    /// path that does not start with `/`, a `public_url` that is not `http(s)://`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.listen.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(("web.listen", format!("{:?}: expected HOST:PORT, e.g. 0.0.0.0:8080", self.listen)));
        }
        if let Some(url) = &self.broker_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return Err(("web.broker_url", format!("{url:?}: expected a ws:// or wss:// URL")));
        }
        if !self.broker_ws_path.starts_with('/') {
            return Err(("web.broker_ws_path", format!("{:?} must start with '/'", self.broker_ws_path)));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(("web.public_url", format!("{url:?}: expected an http:// or https:// URL")));
        }
        Ok(())
    }
}
