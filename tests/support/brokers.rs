//! Brokers for the end-to-end tests: the in-process rumqttd, a mosquitto started by the test,
//! and a TCP proxy in front of a broker that can cut its connections.

use super::*;

pub fn rumqttd() -> RunningBroker {
    static BROKER: OnceLock<RunningBroker> = OnceLock::new();
    *BROKER.get_or_init(|| broker::start_local().expect("in-process broker"))
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// A mosquitto started by the test on a free port, with its own folder (config, persistence
/// file, certificates); killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    conf: PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn find_mosquitto() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

static MOSQUITTO_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Mosquitto {
    /// A folder for the broker's files, then `conf(port, folder)` gives the config (with the
    /// `listener` line); `None` when mosquitto is not installed.
    pub fn start_with(conf: impl FnOnce(u16, &std::path::Path) -> String) -> Option<Mosquitto> {
        find_mosquitto()?;
        let port = free_port();
        let n = MOSQUITTO_COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("mcm-edge-mosquitto-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Started as root, mosquitto drops to its own user, which must be able to write here.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf(port, &dir)).unwrap();
        let mut m = Mosquitto { child: None, port, dir, conf: conf_path };
        m.restart();
        Some(m)
    }

    /// Stop with SIGTERM (a persistent broker saves its sessions) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Start (again) with the same config and port; returns once it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "mosquitto is running");
        let bin = find_mosquitto().expect("mosquitto");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin).arg("-c").arg(&self.conf).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))).is_err() {
            let log = std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default();
            assert!(start.elapsed() < Duration::from_secs(10), "mosquitto did not start on port {}: {log}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain mosquitto (anonymous, no persistence); `None` when it is not installed.
pub fn start_mosquitto() -> Option<Mosquitto> {
    Mosquitto::start_with(|port, _| format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"))
}

/// A TCP proxy in front of a broker whose connections the test can cut, to make the broker see
/// an abrupt disconnect (last will) and the service reconnect.
pub struct Proxy {
    pub port: u16,
    pub conns: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let list = Arc::clone(&conns);
        std::thread::spawn(move || {
            for down in listener.incoming() {
                let Ok(down) = down else { continue };
                let Ok(up) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else { continue };
                let mut l = list.lock().unwrap();
                l.push(down.try_clone().unwrap());
                l.push(up.try_clone().unwrap());
                for (mut from, mut to) in [(down.try_clone().unwrap(), up.try_clone().unwrap()), (up, down)] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, conns }
    }

    /// Close every proxied connection at once (no MQTT DISCONNECT).
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}
