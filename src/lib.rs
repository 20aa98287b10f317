//! mcm-edge: sketch / segmentation frames over MQTT -> images from a frozen diffusion model steered
//! by a multimodal conditioning module (MCM; Ham et al., SIGGRAPH 2023), run with tract (or, with the
//! cargo feature `onnxruntime`, a user-supplied onnxruntime library).
//!
//! One concept per module: [`contract`] (model.toml, conditioning tensor), [`runtime`] (nets on
//! tract or onnxruntime), [`diffusion`] (schedule, DDIM, generation), [`frames`] (decoding),
//! [`config`] (edge.toml), [`mqtt`] (transport, TLS, reconnects),
//! [`service`] (MQTT service), [`broker`] (in-process broker), [`display`] (contact sheets, status
//! panel), [`framebuffer`] (status screen output), [`eval`] (metrics), [`bench`] (timings),
//! [`demo`].

pub mod bench;
pub mod broker;
pub mod config;
pub mod contract;
pub mod demo;
pub mod diffusion;
pub mod display;
pub mod error_code;
pub mod eval;
pub mod framebuffer;
pub mod frames;
pub mod mqtt;
pub mod runtime;
pub mod service;
