//! Home Assistant MQTT discovery (README "Home Assistant"): the generated stream image as an
//! `image` entity, published retained on every connect and again when Home Assistant's birth
//! message (`online` on `<discovery_prefix>/status`) shows that it (re)started.
//!
//! Keys as documented for the MQTT image platform
//! (<https://www.home-assistant.io/integrations/image.mqtt/>) and for discovery
//! (<https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery>).

use serde_json::{Value, json};

use super::page::public_url;
use super::state::Ctx;

impl Ctx {
    /// `<discovery_prefix>/status`, where Home Assistant publishes `online` when it starts.
    pub(super) fn home_assistant_birth_topic(&self) -> Option<String> {
        let h = &self.config.home_assistant;
        h.enabled.then(|| format!("{}/status", h.discovery_prefix))
    }

    /// Publish the discovery message (retained), when `[home_assistant]` is enabled.
    pub(super) fn publish_discovery(&self) {
        if !self.config.home_assistant.enabled {
            return;
        }
        let (topic, payload) = discovery(self);
        match self.out.publish(&topic, payload.to_string().into_bytes(), true, None) {
            Ok(()) => log::info!("Home Assistant discovery on {topic}"),
            Err(e) => log::warn!("cannot publish the Home Assistant discovery: {e}"),
        }
    }
}

/// The identifier of this device in Home Assistant: the device id with every character outside
/// `[A-Za-z0-9_-]` replaced by `_` (discovery topics allow no others).
fn node_id(device_id: &str) -> String {
    device_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// The discovery topic and payload of the image entity.
fn discovery(ctx: &Ctx) -> (String, Value) {
    let config = &ctx.config;
    let node = node_id(&config.mqtt.device_id);
    let topic = format!("{}/image/{node}/image/config", config.home_assistant.discovery_prefix);
    let mut device = json!({
        "identifiers": [format!("mcm-edge-{node}")],
        "name": format!("mcm-edge {}", config.mqtt.device_id),
        "manufacturer": "mcm-edge",
        "model": ctx.model_id,
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    if let Some(url) = public_url(config) {
        device["configuration_url"] = json!(url);
    }
    let payload = json!({
        "name": config.home_assistant.name,
        "unique_id": format!("mcm-edge-{node}-image"),
        "image_topic": format!("{}image", ctx.prefix),
        "content_type": "image/png",
        "availability_topic": format!("{}status", ctx.prefix),
        // The retained status is JSON; its last will is {"state":"offline"}.
        "availability_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": { "name": "mcm-edge", "sw_version": env!("CARGO_PKG_VERSION") },
    });
    (topic, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_keep_only_what_discovery_topics_allow() {
        assert_eq!(node_id("edge-1"), "edge-1");
        assert_eq!(node_id("kitchen tablet.2"), "kitchen_tablet_2");
    }
}
