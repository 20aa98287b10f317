//! Shared by the integration tests: a fake generator and its model, test frames, brokers
//! (in-process rumqttd, mosquitto started by the test), a TCP proxy that can cut connections, an
//! MQTT test client, the service under test, the real device binary, and the replay of the
//! exporter's test vectors. Each test file takes what it needs (`mod support; use support::*;`).
#![allow(dead_code, unused_imports)] // each test file uses a part of it

pub use std::io::Cursor;
pub use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
pub use std::path::{Path, PathBuf};
pub use std::process::{Child, Command, Stdio};
pub use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
pub use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
pub use std::sync::{Arc, OnceLock};
pub use std::thread::JoinHandle;
pub use std::time::{Duration, Instant};

pub use base64::Engine;
pub use image::{ImageFormat, Rgb, RgbImage};
pub use mcm_edge::config::{EdgeConfig, MqttProtocol};
pub use mcm_edge::contract::{Maps, ModalityMap, ModelInfo};
pub use mcm_edge::diffusion::{GenerateError, GenerationParams, ImageGenerator};
pub use mcm_edge::runtime::ModelError;
pub use mcm_edge::service::{self, ServiceError, ServiceSummary};
pub use mcm_edge::tools::broker::{self, RunningBroker};
pub use serde_json::{Value, json};

mod brokers;
mod client;
mod device;
mod generator;
mod pngs;
mod svc;
pub mod vectors;

pub use brokers::*;
pub use client::*;
pub use device::*;
pub use generator::*;
pub use pngs::*;
pub use svc::*;

/// How long a test waits for a message.
pub const WAIT: Duration = Duration::from_secs(20);
