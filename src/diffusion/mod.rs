//! Diffusion: the noise schedule of the base ([`Schedule`]), seeded noise, the DDIM sampler
//! ([`ddim_step`]), conditioning strength ([`apply_strength`]) and the pipeline that runs them over
//! the MCM-modulated base ([`Pipeline`]).

mod ddim;
mod guidance;
mod noise;
mod pipeline;
mod schedule;

pub use ddim::ddim_step;
pub use guidance::{MAX_STRENGTH, apply_strength};
pub use noise::Noise;
pub use pipeline::{GenerateError, GenerationParams, ImageGenerator, LoadError, Pipeline, from_image, to_image};
pub use schedule::{Schedule, ScheduleError};
