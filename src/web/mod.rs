//! The tablet page (`web/` in the repository): a drawing page that talks MQTT over WebSocket to
//! the broker, served by the device binary from files embedded at build time (README "The tablet
//! page").
//!
//! Parts: `config` (the `[web]` section), `assets` (the embedded files and their content types),
//! `server` (the HTTP server: the files and the generated `config.json` that tells the page
//! where the broker's WebSocket listener is and which topic prefix to use). Credentials are never
//! served: the page asks its user for them.

mod assets;
mod config;
mod server;

pub use assets::{ASSETS, Asset, asset};
pub use config::WebConfig;
pub use server::{BrokerWs, PageConfig, WebError, WebServer, serve};
