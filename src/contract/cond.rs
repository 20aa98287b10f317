//! The conditioning tensor `cond` [1, K, H, W] fed to the MCM (README "Model contract").
//!
//! Per modality, in `model.toml` order: its map channels (one-hot classes for a segmentation, one
//! stroke channel in [0, 1] for a sketch, the values of a dense map) followed by one presence
//! channel, all ones when the modality is given and all zeros (maps included) when it is absent
//! (Ham et al. 2023, Sec. 3.3). The trainer builds the same layout (`contract.modalities.build_cond`);
//! `tests/parity.rs` replays its vectors.

use std::collections::BTreeMap;

use ndarray::{Array2, Array3, Array4, s};

use super::model_toml::{ModalityKind, ModelInfo};

/// A decoded modality frame at the model's size.
#[derive(Debug, Clone, PartialEq)]
pub enum ModalityMap {
    /// Class ids `[H, W]`, each `< classes.len()`.
    Segmentation(Array2<u8>),
    /// Stroke strength `[H, W]` in `[0, 1]`, 1 on a stroke.
    Sketch(Array2<f32>),
    /// Values `[C, H, W]` of a dense map, in its modality's value range.
    Dense(Array3<f32>),
}

/// The given modalities of one generation, by modality name.
pub type Maps = BTreeMap<String, ModalityMap>;

/// A map that does not fit the model.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CondError {
    #[error("unknown modality {0:?}")]
    UnknownModality(String),
    #[error("modality {name:?}: expected a {expected} map")]
    WrongKind { name: String, expected: &'static str },
    #[error("modality {name:?}: map is {got:?}, the model needs [{size}, {size}]")]
    WrongSize { name: String, got: [usize; 2], size: usize },
    #[error("modality {name:?}: class id {id} but the model has {classes} classes")]
    ClassOutOfRange { name: String, id: u8, classes: usize },
    #[error("modality {name:?}: map has {got} channels, the model needs {channels}")]
    WrongChannels { name: String, got: usize, channels: usize },
}

/// Build `cond` f32 `[1, K, H, W]` for `maps` (any subset of the model's modalities).
///
/// # Errors
/// A map names an unknown modality, has the wrong kind or size, or holds a class id out of range.
pub fn build_cond(info: &ModelInfo, maps: &Maps) -> Result<Array4<f32>, CondError> {
    let size = info.image.size;
    if let Some(name) = maps.keys().find(|n| info.modality(n).is_none()) {
        return Err(CondError::UnknownModality(name.clone()));
    }
    let mut cond = Array4::<f32>::zeros((1, info.cond_channels(), size, size));
    let mut offset = 0;
    for m in &info.modalities {
        if let Some(map) = maps.get(&m.name) {
            match (m.kind, map) {
                (ModalityKind::Segmentation, ModalityMap::Segmentation(ids)) => {
                    check_size(&m.name, ids.dim(), size)?;
                    for ((y, x), &id) in ids.indexed_iter() {
                        if id as usize >= m.channels {
                            return Err(CondError::ClassOutOfRange { name: m.name.clone(), id, classes: m.channels });
                        }
                        cond[[0, offset + id as usize, y, x]] = 1.0;
                    }
                }
                (ModalityKind::Sketch, ModalityMap::Sketch(strokes)) => {
                    check_size(&m.name, strokes.dim(), size)?;
                    cond.slice_mut(s![0, offset, .., ..]).assign(strokes);
                }
                (ModalityKind::Dense, ModalityMap::Dense(values)) => {
                    let (c, h, w) = values.dim();
                    check_size(&m.name, (h, w), size)?;
                    if c != m.channels {
                        return Err(CondError::WrongChannels { name: m.name.clone(), got: c, channels: m.channels });
                    }
                    cond.slice_mut(s![0, offset..offset + c, .., ..]).assign(values);
                }
                (kind, _) => return Err(CondError::WrongKind { name: m.name.clone(), expected: kind.name() }),
            }
            cond.slice_mut(s![0, offset + m.channels, .., ..]).fill(1.0);
        }
        offset += m.channels + 1;
    }
    Ok(cond)
}

fn check_size(name: &str, dim: (usize, usize), size: usize) -> Result<(), CondError> {
    if dim != (size, size) {
        return Err(CondError::WrongSize { name: name.to_string(), got: [dim.0, dim.1], size });
    }
    Ok(())
}
