//! An in-process MQTT broker (rumqttd) on localhost, for the demo and the tests.
//!
//! Configured from code, no file needed. It listens for MQTT 3.1.1 on one port and MQTT 5 on
//! another, and optionally for MQTT 3.1.1 over WebSocket (the tablet page; rumqttd's WebSocket
//! listener speaks 3.1.1 only); all share one router, so 3.1.1 and 5 clients see each other's messages, except
//! that rumqttd 0.20 panics the connection task of a 3.1.1 subscriber when a publish that carries
//! MQTT 5 properties (response topic, correlation data, ...) is forwarded to it: mix versions
//! only for publishes without properties. rumqttd has no shutdown: the broker's threads live
//! until the process exits.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
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
    /// MQTT 3.1.1 over WebSocket listener, when asked for (its address may be `0.0.0.0`).
    pub ws: Option<SocketAddr>,
}

/// What to start: ports (0 = a free ephemeral port) and the packet size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerSpec {
    /// MQTT 3.1.1 port on 127.0.0.1.
    pub port: u16,
    /// MQTT 5 port on 127.0.0.1.
    pub v5_port: u16,
    /// The WebSocket listener's address (e.g. `0.0.0.0:9001` for tablets on the network), if any.
    pub ws: Option<SocketAddr>,
    /// Largest packet accepted on every listener, in bytes (`mqtt.max_packet_bytes`; a real frame
    /// is far above rumqttd's example limit of 20 KiB).
    pub max_packet_bytes: usize,
}

/// Start a broker: MQTT 3.1.1 and MQTT 5 on 127.0.0.1, and WebSocket where `spec` asks for it.
/// Returns once every listener accepts connections.
///
/// # Errors
/// [`BrokerError::Port`] when a port is taken, [`BrokerError::NotListening`] when a listener
/// does not come up within 5 s.
pub fn start(spec: &BrokerSpec) -> Result<RunningBroker, BrokerError> {
    let mut taken = Vec::new();
    let port = pick_port(Ipv4Addr::LOCALHOST.into(), spec.port, &taken)?;
    taken.push(port);
    let v5_port = pick_port(Ipv4Addr::LOCALHOST.into(), spec.v5_port, &taken)?;
    taken.push(v5_port);
    let ws = match spec.ws {
        Some(addr) => Some(SocketAddr::new(addr.ip(), pick_port(addr.ip(), addr.port(), &taken)?)),
        None => None,
    };
    let config = broker_config(port, v5_port, ws, spec.max_packet_bytes);
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = Broker::new(config);
            if let Err(e) = broker.start() {
                log::error!("in-process broker stopped: {e}");
            }
        })
        .map_err(BrokerError::Thread)?;
    for p in [port, v5_port].into_iter().chain(ws.map(|a| a.port())) {
        wait_listening(p, Duration::from_secs(5))?;
    }
    let ws_note = ws.map(|a| format!(", ws://{a} (3.1.1 over WebSocket)")).unwrap_or_default();
    log::info!("in-process MQTT broker on 127.0.0.1:{port} (3.1.1) and 127.0.0.1:{v5_port} (5){ws_note}");
    Ok(RunningBroker { port, v5_port, ws })
}

/// [`start`] on free ephemeral ports, without WebSocket, with a 64 MiB packet limit.
///
/// # Errors
/// As [`start`].
pub fn start_local() -> Result<RunningBroker, BrokerError> {
    start(&BrokerSpec { port: 0, v5_port: 0, ws: None, max_packet_bytes: 64 * 1024 * 1024 })
}

/// `port` on `ip` if it can be bound now, or a free ephemeral port not in `taken` when `port`
/// is 0.
fn pick_port(ip: IpAddr, port: u16, taken: &[u16]) -> Result<u16, BrokerError> {
    loop {
        let listener = TcpListener::bind(SocketAddr::new(ip, port)).map_err(|source| BrokerError::Port { port, source })?;
        let picked = listener.local_addr().map_err(|source| BrokerError::Port { port, source })?.port();
        if port != 0 || !taken.contains(&picked) {
            return Ok(picked);
        }
    }
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

fn broker_config(port: u16, v5_port: u16, ws: Option<SocketAddr>, max_packet_bytes: usize) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_packet_bytes,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = |name: &str, listen: SocketAddr| ServerSettings {
        name: name.to_string(),
        listen,
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
        v4: Some(HashMap::from([("1".to_string(), server("v4-1", SocketAddr::from((Ipv4Addr::LOCALHOST, port))))])),
        v5: Some(HashMap::from([("1".to_string(), server("v5-1", SocketAddr::from((Ipv4Addr::LOCALHOST, v5_port))))])),
        ws: ws.map(|addr| HashMap::from([("1".to_string(), server("ws-1", addr))])),
        ..Config::default()
    }
}
