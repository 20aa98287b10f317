//! mcm-edge: sketch / segmentation frames over MQTT -> images from a frozen diffusion model steered
//! by a multimodal conditioning module (MCM; Ham et al., SIGGRAPH 2023), run with tract (or, with the
//! cargo feature `onnxruntime`, a user-supplied onnxruntime library).
//!
//! One folder per part, one concept per module:
//! - [`contract`]: `model.toml` ([`contract::ModelInfo`]) and the conditioning tensor
//!   ([`contract::build_cond`]).
//! - [`runtime`]: the nets ([`runtime::Net`], [`runtime::Models`]) on tract or onnxruntime, fed
//!   as each ONNX file declares its inputs, the text encoder with `tokenizer.json`, the contract
//!   checks both backends share, [`runtime::ModelError`], `[runtime]` in edge.toml.
//! - [`diffusion`]: noise schedule and diffusers' timestep grids, seeded or replayed noise, DDIM
//!   (and Euler) and LCM steps, conditioning strength, classifier-free guidance and the generation
//!   pipeline ([`diffusion::Pipeline`]).
//! - [`frames`]: untrusted PNG / JPEG frames -> modality maps (one module per modality kind).
//! - [`mqtt`]: `[mqtt]` in edge.toml, connection settings and TLS, topic rules, the client, in-order
//!   acknowledgements and the event loop thread.
//! - [`config`]: `edge.toml` ([`config::EdgeConfig`]): the sections, their checks.
//! - [`service`]: the MQTT service (run, outbox, shared state and status, dispatcher, worker,
//!   request JSON).
//! - [`display`]: pictures (map pictures, contact sheets), the status panel and its output
//!   (framebuffer or PNG preview).
//! - [`web`]: the tablet page (`web/`, embedded at build time), `[web]` in edge.toml, and its
//!   HTTP server with the page's `config.json`.
//! - [`tools`]: demo, evaluation, bench, a model's cost (`info`), the replay of its test vectors
//!   (`verify`) and the in-process MQTT broker.
//! - [`error_code`]: the codes of the `P/error` topic ([`error_code::ErrorCode`]).
//!
//! Dependency graph (module -> the modules it uses; no module uses one that uses it back):
//!
//! ```text
//! error_code -> (none)
//! contract   -> (none)
//! mqtt       -> (none)
//! runtime    -> contract
//! web        -> (none)
//! diffusion  -> contract, error_code, runtime
//! frames     -> contract, error_code
//! display    -> contract
//! config     -> contract, diffusion, display, mqtt, runtime, web
//! service    -> config, contract, diffusion, display, error_code, frames, mqtt, web
//! tools      -> config, contract, diffusion, display, frames, runtime, service, web
//! ```

pub mod config;
pub mod contract;
pub mod diffusion;
pub mod display;
pub mod error_code;
pub mod frames;
pub mod mqtt;
pub mod runtime;
pub mod service;
pub mod tools;
pub mod web;
