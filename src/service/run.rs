//! Start, supervision and shutdown of the service: the loop, dispatcher and worker threads.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::TICK;
use super::dispatch::dispatch;
use super::page::page_config;
use super::state::{Ctx, ServiceSummary};
use super::worker::work;
use crate::config::{ConfigError, EdgeConfig, MqttProtocol};
use crate::diffusion::ImageGenerator;
use crate::display::BrokerState;
use crate::display::{DisplayError, StatusDisplay};
use crate::mqtt::{self, Backoff, LoopCtx, OFFLINE, Settings, TransportError};
use crate::web::{self, WebError};

/// Errors that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The connection settings (credentials, TLS files) are unusable.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The status display (framebuffer) cannot be opened.
    #[error(transparent)]
    Display(#[from] DisplayError),
    /// The tablet page cannot be served (`[web]`).
    #[error(transparent)]
    Web(#[from] WebError),
    /// A thread could not be started.
    #[error("cannot start thread {name}: {source}")]
    Thread { name: &'static str, source: std::io::Error },
    /// A thread panicked; the service was stopped.
    #[error("thread {0} panicked")]
    Panic(&'static str),
}

/// Register SIGINT and SIGTERM: the first sets the returned flag (pass it to [`run`] for a clean
/// shutdown), a second one while it is set exits the process at once with status 1.
///
/// # Errors
/// The signal handlers could not be registered.
pub fn shutdown_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    Ok(flag)
}

/// Run the service until `shutdown` becomes true, then finish the current job, answer the
/// queued requests with `shutting_down`, publish the offline status and disconnect.
///
/// Connection failures are not errors: the service keeps reconnecting with a backoff from
/// `mqtt.reconnect_delay_ms` up to `mqtt.reconnect_max_delay_ms` and renews its subscriptions and
/// status on every CONNACK.
///
/// # Errors
/// An invalid `config`, unreadable credential or TLS files, a thread that cannot be started or
/// that panicked.
pub fn run(
    config: &EdgeConfig,
    generator: Arc<dyn ImageGenerator>,
    shutdown: Arc<AtomicBool>,
) -> Result<ServiceSummary, ServiceError> {
    config.validate(Path::new("<config>"))?;
    let prefix = config.mqtt.topic_prefix();
    let settings = Settings::from_config(&config.mqtt)?;
    let display = StatusDisplay::new(&config.display)?;
    if config.display.enabled {
        log::info!("status display: {}", config.display.describe());
    }
    let page = if config.web.enabled { Some(web::serve(&config.web.listen, &page_config(config))?) } else { None };
    let status_topic = format!("{prefix}status");
    let (mqtt, driver) = mqtt::connect(&config.mqtt, &settings, &status_topic);
    log::info!(
        "mcm-edge service: broker {}:{} (MQTT {}{}), client id {:?}, prefix {prefix:?}",
        settings.host,
        settings.port,
        if config.mqtt.protocol == MqttProtocol::V5 { "5" } else { "3.1.1" },
        if settings.uses_tls() { ", TLS" } else { "" },
        config.mqtt.client_id()
    );

    let ctx = Ctx::new(config, generator, mqtt.clone(), prefix, display);
    let (tx, rx) = mpsc::channel();
    let loop_ctx = LoopCtx {
        tx,
        stop: Arc::new(AtomicBool::new(false)),
        alive: Arc::clone(&ctx.loop_alive),
        connected: Arc::clone(&ctx.connected),
        backoff: Backoff::new(
            Duration::from_millis(config.mqtt.reconnect_delay_ms),
            Duration::from_millis(config.mqtt.reconnect_max_delay_ms),
        ),
        clean_session: config.mqtt.clean_session,
    };
    let loop_stop = Arc::clone(&loop_ctx.stop);
    let loop_thread = spawn("mqtt-loop", move || driver.drive(loop_ctx))?;
    let dispatcher = {
        let ctx = ctx.clone();
        spawn("mqtt-dispatch", move || dispatch(ctx, rx))?
    };
    let workers = (0..config.runtime.workers.max(1))
        .map(|_| {
            let ctx = ctx.clone();
            spawn("mcm-worker", move || work(ctx))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Supervise: stop on request, or when a thread ended unexpectedly (a panic).
    while !shutdown.load(Ordering::SeqCst)
        && !dispatcher.is_finished()
        && !workers.iter().any(JoinHandle::is_finished)
        && !loop_thread.is_finished()
    {
        std::thread::sleep(TICK);
    }
    log::info!("stopping: finishing the current job");
    if let Some(page) = page {
        page.stop();
    }
    ctx.shared.stopping.store(true, Ordering::SeqCst);
    ctx.shared.wake.notify_all();
    let mut panicked = None;
    if dispatcher.join().is_err() {
        panicked = Some("mqtt-dispatch");
    }
    for worker in workers {
        if worker.join().is_err() {
            panicked = Some("mcm-worker");
        }
    }
    if let Err(e) = ctx.out.publish(&status_topic, OFFLINE.to_vec(), true, None) {
        log::warn!("cannot publish the offline status: {e}");
    }
    mqtt.disconnect();
    loop_stop.store(true, Ordering::SeqCst);
    drop(mqtt);
    let summary = ctx.summary();
    ctx.refresh_display(BrokerState::Offline);
    drop(ctx); // the last client handles: lets the event loop end
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loop_thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if loop_thread.is_finished() {
        if loop_thread.join().is_err() {
            panicked = Some("mqtt-loop");
        }
    } else {
        log::warn!("the MQTT event loop did not stop within 5 s; leaving it");
    }
    log::info!("stopped: {summary:?}");
    match panicked {
        Some(name) => Err(ServiceError::Panic(name)),
        None => Ok(summary),
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &'static str, f: F) -> Result<JoinHandle<()>, ServiceError> {
    std::thread::Builder::new().name(name.into()).spawn(f).map_err(|source| ServiceError::Thread { name, source })
}

