//! The model contract between `mcm-train` and the device (README "Model contract"): `model.toml`
//! ([`ModelInfo`]: image, schedule, nets, modalities) and the conditioning tensor `cond` built
//! from the decoded modality maps ([`build_cond`]).

mod cond;
mod model_toml;

pub use cond::{CondError, Maps, ModalityMap, build_cond};
pub use model_toml::{
    ClassInfo, ContractViolation, ImageInfo, LatentInfo, McmInfo, ModalityInfo, ModalityKind, ModelInfo, ModelTomlError, NetInfo, Prediction, SamplerKind, ScheduleInfo, SegmenterInfo, TextInfo,
};
