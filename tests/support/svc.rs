//! The service under test, with the fake generator, in this process.

use super::*;

pub struct Svc {
    pub prefix: String,
    pub shutdown: Arc<AtomicBool>,
    pub handle: JoinHandle<Result<ServiceSummary, ServiceError>>,
    pub generator: Arc<FakeGenerator>,
}

impl Svc {
    pub fn stop(self) -> ServiceSummary {
        self.shutdown.store(true, Ordering::SeqCst);
        self.handle.join().expect("service thread").expect("service result")
    }
}

pub static DEVICE_COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn test_config(port: u16, protocol: MqttProtocol) -> EdgeConfig {
    let mut config = EdgeConfig::default();
    config.mqtt.port = port;
    config.mqtt.protocol = protocol;
    config.mqtt.device_id = format!("dev{}-{}", std::process::id(), DEVICE_COUNTER.fetch_add(1, Ordering::SeqCst));
    config.mqtt.reconnect_delay_ms = 100;
    config.generation.steps = 4;
    config
}

/// Start the service and a test client subscribed to `P/#`; returns once the service said online.
pub fn start(config: EdgeConfig, delay: Duration, client_protocol: MqttProtocol) -> (Svc, TestClient) {
    let mut tc = TestClient::connect(config.mqtt.port, client_protocol);
    tc.subscribe(&format!("{}#", config.mqtt.topic_prefix()));
    let svc = spawn_service(config, delay, &mut tc);
    (svc, tc)
}

/// Start the service with a fake generator taking `delay` per image; returns once `tc`
/// (subscribed to `P/#`) saw it online.
pub fn spawn_service(config: EdgeConfig, delay: Duration, tc: &mut TestClient) -> Svc {
    let prefix = config.mqtt.topic_prefix();
    let generator = FakeGenerator::new(delay);
    let shutdown = Arc::new(AtomicBool::new(false));
    let handle = {
        let generator: Arc<dyn ImageGenerator> = generator.clone();
        let shutdown = Arc::clone(&shutdown);
        std::thread::spawn(move || service::run(&config, generator, shutdown))
    };
    let status_topic = format!("{prefix}status");
    tc.wait_for("online status", |m| m.topic == status_topic && m.json()["state"] == "online");
    Svc { prefix, shutdown, handle, generator }
}

pub fn request(id: &str, frames: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "id": id, "frames": frames })).unwrap()
}
