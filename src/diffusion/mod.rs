//! Diffusion: the noise schedule of the base and its timestep grids ([`Schedule`]), seeded or
//! replayed noise, the samplers (DDIM [`ddim_step`], which also takes Euler's steps, and LCM's
//! [`lcm_step`]), guidance (conditioning strength [`apply_strength`], classifier-free guidance,
//! LCM's guidance embedding) and the pipeline that runs them over the MCM-modulated base
//! ([`Pipeline`]).

mod ddim;
mod guidance;
mod lcm;
mod noise;
mod pipeline;
mod schedule;

pub use ddim::ddim_step;
pub use guidance::{MAX_STRENGTH, apply_strength, classifier_free_guidance, guidance_scale_embedding};
pub use lcm::{boundary_scalings, lcm_step};
pub use noise::{Noise, NoiseSource, Replay};
pub use pipeline::{
    DEFAULT_GUIDANCE_SCALE, GenerateError, GenerationParams, ImageGenerator, LoadError, MAX_GUIDANCE_SCALE, MAX_PROMPT_CHARS, Pipeline, PromptEmbedding, TextParamError, TextParams, from_image,
    to_image,
};
pub use schedule::{Schedule, ScheduleError};
