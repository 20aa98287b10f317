//! Seeded noise: the same seed gives the same tensors on every platform.

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
