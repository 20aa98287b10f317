//! DDIM sampler (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12).

use ndarray::{Array4, Zip};

use super::noise::NoiseSource;

/// One DDIM update from `x_t` (alpha_bar `ab_t`) to `x_prev` (alpha_bar `ab_prev`), in place.
///
/// `x_t`, `eps` are `[B, C, H, W]`; with `clip`, the predicted `x_0` is clipped to it (format 1:
/// the image's value range; format 2: `clip_sample_range`, usually none) and eps re-derived from
/// it; `eta` in `[0, 1]` scales the added noise (0 = deterministic DDIM, 1 = DDPM posterior
/// variance); `noise` is used only when `eta > 0`. Euler (diffusers' EulerDiscreteScheduler, no
/// churn) is this step with eta 0 and no clip: both are Euler steps of the probability-flow ODE in
/// `x / sqrt(alpha_bar)` over `sigma = sqrt((1 - alpha_bar) / alpha_bar)`.
pub fn ddim_step(x_t: &mut Array4<f32>, eps: &Array4<f32>, ab_t: f64, ab_prev: f64, eta: f32, clip: Option<[f32; 2]>, noise: &mut dyn NoiseSource) {
    let sigma = eta as f64 * ((1.0 - ab_prev) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_prev).max(0.0).sqrt();
    let (sa_t, sb_t) = (ab_t.sqrt() as f32, (1.0 - ab_t).sqrt() as f32);
    let sa_prev = ab_prev.sqrt() as f32;
    let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt() as f32;
    Zip::from(&mut *x_t).and(eps).for_each(|x, &e| {
        let (x_0, e) = match clip {
            Some([lo, hi]) => {
                let x_0 = ((*x - sb_t * e) / sa_t).clamp(lo, hi);
                (x_0, (*x - sa_t * x_0) / sb_t)
            }
            None => ((*x - sb_t * e) / sa_t, e),
        };
        *x = sa_prev * x_0 + dir * e;
    });
    if sigma > 0.0 {
        let z = noise.next(x_t.dim().into());
        x_t.scaled_add(sigma as f32, &z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::Noise;

    #[test]
    fn exact_eps_recovers_x0_in_one_step() {
        // x_t built from a known x_0 and eps; a DDIM step to alpha_bar = 1 must return x_0.
        let x_0 = Array4::from_shape_fn([1, 1, 2, 2], |(_, _, y, x)| (y as f32 - x as f32) * 0.5);
        let eps = Noise::new(1).randn([1, 1, 2, 2]);
        let ab = 0.3f64;
        let mut x_t = &x_0 * (ab.sqrt() as f32) + &eps * ((1.0 - ab).sqrt() as f32);
        ddim_step(&mut x_t, &eps, ab, 1.0, 0.0, Some([-1.0, 1.0]), &mut Noise::new(0));
        assert!(x_t.iter().zip(x_0.iter()).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn predicted_x0_is_clipped() {
        let mut x_t = Array4::from_elem([1, 1, 1, 1], 5.0f32);
        let eps = Array4::zeros([1, 1, 1, 1]);
        ddim_step(&mut x_t, &eps, 0.5, 1.0, 0.0, Some([-1.0, 1.0]), &mut Noise::new(0));
        assert_eq!(x_t[[0, 0, 0, 0]], 1.0);
    }
}
