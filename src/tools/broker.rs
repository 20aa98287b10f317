//! An in-process MQTT broker (rumqttd) on localhost, for the demo and the tests.
//!
//! Configured from code, no file needed. It listens for MQTT 3.1.1 on one port and MQTT 5 on
//! another; both share one router, so 3.1.1 and 5 clients see each other's messages, except
//! that rumqttd 0.20 panics the connection task of a 3.1.1 subscriber when a publish that carries
//! MQTT 5 properties (response topic, correlation data, ...) is forwarded to it: mix versions
//! only for publishes without properties. rumqttd has no shutdown: the broker's threads live
//! until the process exits.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The port could not be bound (already in use, or no free port).
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Port { port: u16, source: std::io::Error },
    /// The broker thread could not be started.
    #[error("cannot start the broker thread: {0}")]
    Thread(std::io::Error),
    /// The listener did not accept connections in time.
    #[error("the broker did not accept connections on 127.0.0.1:{port} within {seconds} s")]
    NotListening { port: u16, seconds: u64 },
}

/// Ports of a running in-process broker on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningBroker {
    /// MQTT 3.1.1 listener.
    pub port: u16,
    /// MQTT 5 listener.
    pub v5_port: u16,
}

/// Start a broker on 127.0.0.1: MQTT 3.1.1 on `port` and MQTT 5 on `v5_port` (0 = a free
/// ephemeral port for either), accepting packets up to `max_packet_bytes` bytes. Returns once
/// both listeners accept connections.
///
/// # Errors
/// [`BrokerError::Port`] when a port is taken, [`BrokerError::NotListening`] when a listener
/// does not come up within 5 s.
pub fn start(port: u16, v5_port: u16, max_packet_bytes: usize) -> Result<RunningBroker, BrokerError> {
    let port = pick_port(port)?;
    let v5_port = loop {
        let p = pick_port(v5_port)?;
        if p != port {
            break p;
        }
    };
    let config = broker_config(port, v5_port, max_packet_bytes);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                log::error!("in-process broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    for p in [port, v5_port] {
        wait_listening(p, Duration::from_secs(5))?;
    }
    log::info!("in-process MQTT broker on 127.0.0.1:{port} (3.1.1) and 127.0.0.1:{v5_port} (5)");
    Ok(RunningBroker { port, v5_port })
}

/// [`start`] on two free ephemeral ports with a 64 MiB packet limit.
///
/// # Errors
/// As [`start`].
pub fn start_local() -> Result<RunningBroker, BrokerError> {
    start(0, 0, 64 * 1024 * 1024)
}

/// `port` if it can be bound now, or a free ephemeral port when `port` is 0.
fn pick_port(port: u16) -> Result<u16, BrokerError> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
        .map_err(|source| BrokerError::Port { port, source })?;
    let port = listener.local_addr().map_err(|source| BrokerError::Port { port, source })?.port();
    Ok(port)
}

fn wait_listening(port: u16, timeout: Duration) -> Result<(), BrokerError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BrokerError::NotListening { port, seconds: timeout.as_secs() })
}

fn broker_config(port: u16, v5_port: u16, max_packet_bytes: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_packet_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, port: u16| ServerSettings {
        name: name.to_string(),
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            // A segment must hold at least one packet; keep a few per topic.
            max_segment_size: max_packet_bytes.max(16 * 1024 * 1024) * 2,
            max_segment_count: 4,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server("v4-1", port))])),
        v5: Some(HashMap::from([("1".to_string(), server("v5-1", v5_port))])),
        ..Config::default()
    }
}
