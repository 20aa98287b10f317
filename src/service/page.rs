//! The tablet page as this service presents it: the `config.json` it serves (topic prefix,
//! broker WebSocket) and the page's public URL (for Home Assistant's `configuration_url`).

use crate::config::EdgeConfig;
use crate::web::{BrokerWs, PageConfig};

/// `config.json` of the page for a device running `config`.
pub fn page_config(config: &EdgeConfig) -> PageConfig {
    let w = &config.web;
    PageConfig {
        device_id: config.mqtt.device_id.clone(),
        topic_prefix: config.mqtt.topic_prefix(),
        broker: BrokerWs { url: w.broker_url.clone(), port: w.broker_ws_port, path: w.broker_ws_path.clone() },
        mqtt_protocol: 4,
    }
}

/// The page's URL as users reach it: `[web] public_url`, else `http://<host>:<port>/` from
/// `[web] listen` (this machine's host name when it listens on every interface); `None` when
/// the page is not served.
pub fn public_url(config: &EdgeConfig) -> Option<String> {
    let w = &config.web;
    if let Some(url) = &w.public_url {
        return Some(url.clone());
    }
    if !w.enabled {
        return None;
    }
    let (host, port) = w.listen.rsplit_once(':')?;
    let host = match host {
        "0.0.0.0" | "[::]" | "::" => host_name(),
        h => h.to_string(),
    };
    Some(format!("http://{host}:{port}/"))
}

/// This machine's host name (Linux), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_config_and_url_follow_the_config() {
        let mut c = EdgeConfig::default();
        c.mqtt.device_id = "tab".into();
        let page = page_config(&c);
        assert_eq!((page.topic_prefix.as_str(), page.broker.port, page.broker.url.as_deref()), ("mcm/tab/", 9001, None));
        assert_eq!(public_url(&c), None);
        c.web.enabled = true;
        c.web.listen = "192.168.1.5:8080".into();
        assert_eq!(public_url(&c).as_deref(), Some("http://192.168.1.5:8080/"));
        c.web.listen = "0.0.0.0:8080".into();
        let url = public_url(&c).unwrap();
        assert!(url.starts_with("http://") && url.ends_with(":8080/") && !url.contains("0.0.0.0"), "{url}");
        c.web.public_url = Some("https://art.example/".into());
        c.web.broker_url = Some("wss://broker.example/mqtt".into());
        assert_eq!(public_url(&c).as_deref(), Some("https://art.example/"));
        assert_eq!(page_config(&c).broker.url.as_deref(), Some("wss://broker.example/mqtt"));
    }
}
