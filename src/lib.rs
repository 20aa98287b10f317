//! mcm-edge: sketch / segmentation frames over MQTT -> images from a frozen diffusion model steered
//! by a multimodal conditioning module (MCM; Ham et al., SIGGRAPH 2023), run with tract.
//!
//! One concept per module: [`model_info`] (model.toml), [`schedule`] (noise schedule), [`sampler`]
//! (DDIM), [`model`] (tract plans), [`cond`] (conditioning tensor), [`pipeline`] (generation),
//! [`frames`] (decoding), [`config`] (edge.toml), [`service`] (MQTT), [`broker`] (in-process
//! broker), [`display`] (contact sheets), [`eval`] (metrics), [`demo`].

pub mod cond;
pub mod frames;
pub mod model_info;
pub mod pipeline;
pub mod model;
pub mod sampler;
pub mod schedule;
pub mod display;
pub mod eval;
pub mod config;
pub mod service;
pub mod broker;
pub mod bench;
pub mod demo;
