//! An MQTT test client (3.1.1 or 5), receiving everything under a filter.

use super::*;

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// The broker's DUP flag: a redelivery of a publish it may have delivered before.
    pub dup: bool,
    pub correlation: Option<Vec<u8>>,
    pub content_type: Option<String>,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{}: not JSON: {e}", self.topic))
    }
}

pub enum Ev {
    SubAck,
    Msg(Msg),
}

#[derive(Clone)]
pub enum TcClient {
    V4(rumqttc::Client),
    V5(rumqttc::v5::Client),
}

/// Forward a connection's events to the test thread until it hangs up; connection errors are
/// retried after a pause (the event loop reconnects by itself).
pub fn pump<E, Er>(events: impl Iterator<Item = Result<E, Er>>, tx: &mpsc::Sender<Ev>, to_ev: impl Fn(E) -> Option<Ev>) {
    for ev in events {
        match ev {
            Ok(ev) => {
                if let Some(ev) = to_ev(ev)
                    && tx.send(ev).is_err()
                {
                    break;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub struct TestClient {
    pub client: TcClient,
    pub rx: Receiver<Ev>,
    pub seen: Vec<Msg>,
    pub qos: u8,
}

pub static CLIENT_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestClient {
    pub fn connect(port: u16, protocol: MqttProtocol) -> TestClient {
        let id = format!("test-{}-{}", std::process::id(), CLIENT_COUNTER.fetch_add(1, Ordering::SeqCst));
        Self::connect_with(port, protocol, &id, true, 1)
    }

    /// A client with its own id, session mode and QoS (of subscriptions and publishes).
    pub fn connect_with(port: u16, protocol: MqttProtocol, id: &str, clean_session: bool, qos: u8) -> TestClient {
        let (tx, rx) = mpsc::channel();
        let client = match protocol {
            MqttProtocol::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
                o.set_max_packet_size(64 << 20, 64 << 20).set_keep_alive(Duration::from_secs(5)).set_clean_session(clean_session);
                let (client, mut conn) = rumqttc::Client::new(o, 100);
                std::thread::spawn(move || {
                    use rumqttc::{Event, Packet};
                    pump(conn.iter(), &tx, |ev| match ev {
                        Event::Incoming(Packet::Publish(p)) => Some(Ev::Msg(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
                            correlation: None,
                            content_type: None,
                        })),
                        Event::Incoming(Packet::SubAck(_)) => Some(Ev::SubAck),
                        _ => None,
                    })
                });
                TcClient::V4(client)
            }
            MqttProtocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
                o.set_max_packet_size(Some(64 << 20)).set_keep_alive(Duration::from_secs(5)).set_clean_start(clean_session);
                if !clean_session {
                    o.set_session_expiry_interval(Some(600));
                }
                let (client, mut conn) = rumqttc::v5::Client::new(o, 100);
                std::thread::spawn(move || {
                    use rumqttc::v5::Event;
                    use rumqttc::v5::mqttbytes::v5::Packet;
                    pump(conn.iter(), &tx, |ev| match ev {
                        Event::Incoming(Packet::Publish(p)) => Some(Ev::Msg(Msg {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            dup: p.dup,
                            correlation: p.properties.as_ref().and_then(|pr| pr.correlation_data.as_ref().map(|c| c.to_vec())),
                            content_type: p.properties.as_ref().and_then(|pr| pr.content_type.clone()),
                        })),
                        Event::Incoming(Packet::SubAck(_)) => Some(Ev::SubAck),
                        _ => None,
                    })
                });
                TcClient::V5(client)
            }
        };
        TestClient { client, rx, seen: Vec::new(), qos }
    }

    /// Subscribe (at the client's QoS) and wait for the SUBACK.
    pub fn subscribe(&mut self, filter: &str) {
        match &self.client {
            TcClient::V4(c) => c.subscribe(filter, rumqttc::qos(self.qos).unwrap()).unwrap(),
            TcClient::V5(c) => c.subscribe(filter, rumqttc::v5::mqttbytes::qos(self.qos).unwrap()).unwrap(),
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ev::SubAck) => return,
                Ok(Ev::Msg(m)) => self.seen.push(m),
                Err(e) => panic!("no SUBACK for {filter}: {e:?}"),
            }
        }
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let payload = payload.into();
        match &self.client {
            TcClient::V4(c) => c.publish(topic, rumqttc::qos(self.qos).unwrap(), false, payload).unwrap(),
            TcClient::V5(c) => c.publish(topic, rumqttc::v5::mqttbytes::qos(self.qos).unwrap(), false, payload).unwrap(),
        }
    }

    /// MQTT 5 publish with a response topic and correlation data.
    pub fn publish_v5_request(&self, topic: &str, payload: Vec<u8>, response_topic: &str, correlation: &[u8]) {
        let TcClient::V5(c) = &self.client else { panic!("not an MQTT 5 client") };
        let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
            response_topic: Some(response_topic.to_string()),
            correlation_data: Some(correlation.to_vec().into()),
            ..Default::default()
        };
        c.publish_with_properties(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload, props).unwrap();
    }

    /// The first message (seen or arriving within [`WAIT`]) matching `pred`; it is consumed.
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        self.try_wait_for(WAIT, &pred).unwrap_or_else(|| {
            let topics: Vec<&str> = self.seen.iter().map(|m| m.topic.as_str()).collect();
            panic!("timed out waiting for {what}; unmatched messages on {topics:?}")
        })
    }

    pub fn try_wait_for(&mut self, wait: Duration, pred: &impl Fn(&Msg) -> bool) -> Option<Msg> {
        if let Some(i) = self.seen.iter().position(pred) {
            return Some(self.seen.remove(i));
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ev::Msg(m)) if pred(&m) => return Some(m),
                Ok(Ev::Msg(m)) => self.seen.push(m),
                Ok(Ev::SubAck) => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every message arriving within `wait` (plus the unconsumed ones).
    pub fn drain(&mut self, wait: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + wait;
        while let Ok(ev) = self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if let Ev::Msg(m) = ev {
                self.seen.push(m);
            }
        }
        std::mem::take(&mut self.seen)
    }
}
