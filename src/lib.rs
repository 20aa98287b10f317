//! mcm-edge: sketch / segmentation frames over MQTT -> images from a frozen diffusion model steered
//! by a multimodal conditioning module (MCM; Ham et al., SIGGRAPH 2023), run with tract (or, with the
//! cargo feature `onnxruntime`, a user-supplied onnxruntime library).
//!
//! One concept per module: [`model_info`] (model.toml), [`schedule`] (noise schedule), [`sampler`]
//! (DDIM), [`model`] (nets on tract or onnxruntime), [`cond`] (conditioning tensor), [`pipeline`] (generation),
//! [`frames`] (decoding), [`request`] (request JSON), [`config`] (edge.toml), [`mqtt`] (transport,
//! TLS, reconnects), [`service`] (MQTT service), [`broker`] (in-process broker), [`display`]
//! (contact sheets, status panel), [`framebuffer`] (status screen output), [`eval`] (metrics),
//! [`bench`] (timings), [`demo`].

pub mod bench;
pub mod broker;
pub mod cond;
pub mod config;
pub mod demo;
pub mod display;
pub mod eval;
pub mod framebuffer;
pub mod frames;
pub mod model;
pub mod model_info;
pub mod mqtt;
#[cfg(feature = "onnxruntime")]
mod ort_backend;
pub mod pipeline;
pub mod request;
pub mod sampler;
pub mod schedule;
pub mod service;
