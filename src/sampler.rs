//! DDIM sampler (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12) and seeded noise.

use ndarray::{Array4, Zip};
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

/// One DDIM update from `x_t` (alpha_bar `ab_t`) to `x_prev` (alpha_bar `ab_prev`), in place.
///
/// `x_t`, `eps` are `[B, C, H, W]`; the predicted `x_0` is clipped to `clip` (the model's value
/// range) and eps re-derived from it; `eta` in `[0, 1]` scales the added noise (0 = deterministic
/// DDIM, 1 = DDPM posterior variance); `noise` is used only when `eta > 0`.
pub fn ddim_step(x_t: &mut Array4<f32>, eps: &Array4<f32>, ab_t: f64, ab_prev: f64, eta: f32, clip: [f32; 2], noise: &mut Noise) {
    let sigma = eta as f64 * ((1.0 - ab_prev) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_prev).max(0.0).sqrt();
    let (sa_t, sb_t) = (ab_t.sqrt() as f32, (1.0 - ab_t).sqrt() as f32);
    let sa_prev = ab_prev.sqrt() as f32;
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt() as f32;
    Zip::from(&mut *x_t).and(eps).for_each(|x, &e| {
        let x_0 = ((*x - sb_t * e) / sa_t).clamp(clip[0], clip[1]);
        let e = (*x - sa_t * x_0) / sb_t;
        *x = sa_prev * x_0 + dir * e;
    });
    if sigma > 0.0 {
        let z = noise.randn(x_t.dim().into());
        x_t.scaled_add(sigma as f32, &z);
    }
}

/// Conditioning strength (README "Strength"): `eps_base + s * (eps_hat - eps_base)`, in place in
/// `eps_hat`. `s = 0` gives the base alone, 1 the MCM, > 1 extrapolates.
pub fn apply_strength(eps_hat: &mut Array4<f32>, eps_base: &Array4<f32>, strength: f32) {
    Zip::from(eps_hat).and(eps_base).for_each(|h, &b| *h = b + strength * (*h - b));
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

    #[test]
    fn exact_eps_recovers_x0_in_one_step() {
        // x_t built from a known x_0 and eps; a DDIM step to alpha_bar = 1 must return x_0.
        let x_0 = Array4::from_shape_fn([1, 1, 2, 2], |(_, _, y, x)| (y as f32 - x as f32) * 0.5);
        let eps = Noise::new(1).randn([1, 1, 2, 2]);
        let ab = 0.3f64;
        let mut x_t = &x_0 * (ab.sqrt() as f32) + &eps * ((1.0 - ab).sqrt() as f32);
        ddim_step(&mut x_t, &eps, ab, 1.0, 0.0, [-1.0, 1.0], &mut Noise::new(0));
        assert!(x_t.iter().zip(x_0.iter()).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn predicted_x0_is_clipped() {
        let mut x_t = Array4::from_elem([1, 1, 1, 1], 5.0f32);
        let eps = Array4::zeros([1, 1, 1, 1]);
        ddim_step(&mut x_t, &eps, 0.5, 1.0, 0.0, [-1.0, 1.0], &mut Noise::new(0));
        assert_eq!(x_t[[0, 0, 0, 0]], 1.0);
    }

    #[test]
    fn strength_interpolates() {
        let base = Array4::from_elem([1, 1, 1, 2], 1.0f32);
        let mut hat = Array4::from_elem([1, 1, 1, 2], 3.0f32);
        apply_strength(&mut hat, &base, 0.0);
        assert_eq!(hat, base);
        let mut hat = Array4::from_elem([1, 1, 1, 2], 3.0f32);
        apply_strength(&mut hat, &base, 1.5);
        assert!(hat.iter().all(|v| (*v - 4.0).abs() < 1e-6));
    }
}
