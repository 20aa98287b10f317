//! Seeded noise: the same seed gives the same tensors on every platform; and replayed noise, for
//! reproducing another implementation's sampling (the exporter's pipeline vectors).

use ndarray::Array4;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Seeded standard-normal noise: the same seed gives the same tensors on every platform.
pub struct Noise(ChaCha8Rng);

impl Noise {
    /// A noise source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A tensor of the given shape with i.i.d. N(0, 1) entries.
    pub fn randn(&mut self, shape: [usize; 4]) -> Array4<f32> {
        Array4::from_shape_simple_fn(shape, || StandardNormal.sample(&mut self.0))
    }
}

/// Where a sampler's noise comes from: [`Noise`] on the device, [`Replay`] to reproduce a
/// recorded sampling.
pub trait NoiseSource {
    /// The next noise tensor of `shape`, `[B, C, H, W]`.
    fn next(&mut self, shape: [usize; 4]) -> Array4<f32>;
}

impl NoiseSource for Noise {
    fn next(&mut self, shape: [usize; 4]) -> Array4<f32> {
        self.randn(shape)
    }
}

/// Recorded noise tensors handed out in order. Past the end, or for another shape, it hands out
/// zeros and counts the miss ([`Replay::misses`]), so that a replay that needed other noise
/// than recorded is reported rather than crashing.
pub struct Replay {
    tensors: std::collections::VecDeque<Array4<f32>>,
    misses: usize,
}

impl Replay {
    /// Hand out `tensors`, first to last.
    pub fn new(tensors: Vec<Array4<f32>>) -> Self {
        Self { tensors: tensors.into(), misses: 0 }
    }

    /// Requests that got zeros: no recorded tensor was left, or it had another shape.
    pub fn misses(&self) -> usize {
        self.misses
    }

    /// Recorded tensors not asked for.
    pub fn left(&self) -> usize {
        self.tensors.len()
    }
}

impl NoiseSource for Replay {
    fn next(&mut self, shape: [usize; 4]) -> Array4<f32> {
        match self.tensors.pop_front() {
            Some(t) if t.dim() == shape.into() => t,
            _ => {
                self.misses += 1;
                Array4::zeros(shape)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_seeded_and_standard() {
        let a = Noise::new(7).randn([1, 3, 32, 32]);
        assert_eq!(a, Noise::new(7).randn([1, 3, 32, 32]));
        assert_ne!(a, Noise::new(8).randn([1, 3, 32, 32]));
        let n = a.len() as f32;
        let mean = a.sum() / n;
        let var = a.mapv(|v| (v - mean).powi(2)).sum() / n;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.08, "mean {mean} var {var}");
    }
}
