//! The HTTP server of the tablet page: the embedded files and `config.json`, on a thread of its
//! own, until [`WebServer::stop`] (or the process) ends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::assets::asset;

/// Why the page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// The address could not be bound (in use, not an address of this machine, ...).
    #[error("web: cannot listen on {listen}: {message}")]
    Listen { listen: String, message: String },
    /// The server thread or its runtime could not be started.
    #[error("web: cannot start the server: {0}")]
    Thread(std::io::Error),
}

/// Where the page finds the broker's MQTT-over-WebSocket listener (`config.json` `broker`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerWs {
    /// Full `ws://` / `wss://` URL; `None`: the page's own host name with `port` and `path`.
    pub url: Option<String>,
    pub port: u16,
    pub path: String,
}

/// `config.json`: what the page needs to know to talk to this device. Never credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PageConfig {
    pub device_id: String,
    /// Topic prefix `P` of the device, with its trailing `/`.
    pub topic_prefix: String,
    pub broker: BrokerWs,
    /// MQTT protocol level the page speaks over WebSocket: 4 (3.1.1; rumqttd's WebSocket
    /// listener speaks nothing else).
    pub mqtt_protocol: u8,
}

/// A running page server.
pub struct WebServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WebServer {
    /// The address it listens on (with the port picked when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's URL on this machine, e.g. `http://127.0.0.1:8080/` (an unspecified listen
    /// address such as `0.0.0.0` is shown as `127.0.0.1`).
    pub fn local_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}/")
    }

    /// Stop serving (open connections finish their responses) and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serve the embedded page and `page` as `/config.json` on `listen` (`HOST:PORT`, port 0 picks
/// a free one), with axum on a thread of its own. Only `GET`/`HEAD` of embedded paths are
/// answered (404 otherwise, 405 for other methods); nothing is read from the file system.
///
/// # Errors
/// [`WebError::Listen`] when the address cannot be bound, [`WebError::Thread`].
pub fn serve(listen: &str, page: &PageConfig) -> Result<WebServer, WebError> {
    let listen_error = |e: std::io::Error| WebError::Listen { listen: listen.to_string(), message: e.to_string() };
    let listener = std::net::TcpListener::bind(listen).map_err(listen_error)?;
    listener.set_nonblocking(true).map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(WebError::Thread)?;
    let config_json = Bytes::from(serde_json::to_vec_pretty(page).unwrap_or_default());
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let thread = std::thread::Builder::new()
        .name("web".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return log::error!("web: {e}"),
                };
                let app = Router::new().fallback(answer).with_state(config_json);
                let until_stopped = async move {
                    while !stopped.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(until_stopped).await {
                    log::error!("web: {e}");
                }
            });
        })
        .map_err(WebError::Thread)?;
    log::info!("tablet page on http://{addr}/");
    Ok(WebServer { addr, stop, thread: Some(thread) })
}

/// The response to `method uri`.
async fn answer(State(config_json): State<Bytes>, method: Method, uri: Uri) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD").into_response();
    }
    let (bytes, content_type) = if uri.path() == "/config.json" {
        (config_json, "application/json")
    } else if let Some(a) = asset(uri.path()) {
        (Bytes::from_static(a.bytes), a.content_type())
    } else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, bytes).into_response()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    /// The raw response to `request`, as far as it came (empty when the connection failed).
    fn get(addr: SocketAddr, request: &str) -> String {
        let Ok(mut s) = TcpStream::connect(addr) else { return String::new() };
        let mut out = Vec::new();
        if s.write_all(request.as_bytes()).is_ok() {
            let _ = s.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn serves_the_page_and_its_config_only() {
        let page = PageConfig {
            device_id: "edge-1".into(),
            topic_prefix: "mcm/edge-1/".into(),
            broker: BrokerWs { url: None, port: 9001, path: "/mqtt".into() },
            mqtt_protocol: 4,
        };
        let server = serve("127.0.0.1:0", &page).unwrap();
        let addr = server.addr();
        assert!(server.local_url().starts_with("http://127.0.0.1:"));
        let index = get(addr, "GET / HTTP/1.0\r\n\r\n");
        assert!(index.starts_with("HTTP/1.0 200") || index.starts_with("HTTP/1.1 200"), "{}", &index[..80.min(index.len())]);
        assert!(index.contains("text/html") && index.contains("<html"));
        let config = get(addr, "GET /config.json HTTP/1.0\r\n\r\n");
        let body: serde_json::Value = serde_json::from_str(config.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["topic_prefix"], "mcm/edge-1/");
        assert_eq!(body["broker"]["port"], 9001);
        assert!(body["broker"]["url"].is_null());
        for bad in ["/../Cargo.toml", "/src/main.rs", "/vendor/README.md", "/%2e%2e/Cargo.toml"] {
            let r = get(addr, &format!("GET {bad} HTTP/1.0\r\n\r\n"));
            assert!(r.contains(" 404 "), "{bad}: {}", &r[..40.min(r.len())]);
        }
        let r = get(addr, "POST / HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert!(r.contains(" 405 "), "{r}");
        server.stop();
        assert!(!get(addr, "GET / HTTP/1.0\r\n\r\n").contains(" 200 "), "still serving after stop");
    }

    #[test]
    fn a_taken_port_is_a_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = taken.local_addr().unwrap().to_string();
        let page = PageConfig { device_id: "d".into(), topic_prefix: "p/".into(), broker: BrokerWs { url: None, port: 1, path: "/".into() }, mqtt_protocol: 4 };
        let err = serve(&listen, &page).err().expect("refused").to_string();
        assert!(err.contains(&listen), "{err}");
    }
}
