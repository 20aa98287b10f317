//! The MQTT client of the service: one cloneable handle ([`Mqtt`]) for MQTT 3.1.1 and 5
//! (rumqttc), created with its event loop by [`connect`], and the reply properties of MQTT 5
//! response-topic publishes.

use std::sync::Arc;

use super::acks::Ack;
use super::config::{MqttConfig, MqttProtocol};
use super::event_loop::Driver;
use super::settings::Settings;

/// Capacity of the rumqttc request channel (publishes waiting for the event loop).
const CHANNEL_CAPACITY: usize = 64;
/// Payload of the last will and of the final status.
pub(crate) const OFFLINE: &[u8] = br#"{"state":"offline"}"#;

/// A cloneable handle that publishes and subscribes, for either protocol version.
#[derive(Clone)]
pub(crate) enum Mqtt {
    V4(rumqttc::Client),
    V5(rumqttc::v5::Client),
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
pub(crate) fn connect(m: &MqttConfig, settings: &Settings, status_topic: &str) -> (Mqtt, Driver) {
    let transport = || match &settings.tls {
        Some(tls) => rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::clone(tls))),
        None => rumqttc::Transport::Tcp,
    };
    match m.protocol {
        MqttProtocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(m.client_id(), &settings.host, settings.port);
            o.set_keep_alive(m.keep_alive())
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
            let mut o = rumqttc::v5::MqttOptions::new(m.client_id(), &settings.host, settings.port);
            // The maximum packet size goes to the broker in CONNECT: a conforming broker then
            // never sends a larger message (it drops it), so one cannot block the session.
            o.set_keep_alive(m.keep_alive())
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

