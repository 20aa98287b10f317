//! Guidance: conditioning strength (README "Strength"), how much of the MCM's modulation goes into
//! the noise prediction the sampler steps on; classifier-free guidance of a text-conditional base;
//! and LCM's guidance embedding.

use ndarray::{Array2, Array4, Zip};

/// Largest conditioning strength the sampler accepts (beyond it the extrapolated eps leaves the
/// range the base was trained on); `limits.max_strength` may not exceed it.
pub const MAX_STRENGTH: f32 = 10.0;

/// Conditioning strength (README "Strength"): `eps_base + s * (eps_hat - eps_base)`, in place in
/// `eps_hat`. `s = 0` gives the base alone, 1 the MCM, > 1 extrapolates.
pub fn apply_strength(eps_hat: &mut Array4<f32>, eps_base: &Array4<f32>, strength: f32) {
    Zip::from(eps_hat).and(eps_base).for_each(|h, &b| *h = b + strength * (*h - b));
}

/// Classifier-free guidance (Ho & Salimans 2022, Eq. 6, as diffusers writes it): `eps_uncond +
/// scale * (eps_cond - eps_uncond)`, in place in `eps_cond`; all `[B, C, H, W]`.
pub fn classifier_free_guidance(eps_cond: &mut Array4<f32>, eps_uncond: &Array4<f32>, scale: f32) {
    Zip::from(eps_cond).and(eps_uncond).for_each(|c, &u| *c = u + scale * (*c - u));
}

/// The guidance-scale embedding of a guidance-distilled base (LCM's `timestep_cond`; Meng et al.
/// 2023, "On Distillation of Guided Diffusion Models", Sec. 4; diffusers'
/// `get_guidance_scale_embedding`): for `w` (the guidance scale - 1), `[1, dim]` with
/// `sin(1000 w f_i)` then `cos(1000 w f_i)`, `f_i = exp(-i ln(10000) / (dim / 2 - 1))`, zero-padded
/// to an odd `dim`.
pub fn guidance_scale_embedding(w: f32, dim: usize) -> Array2<f32> {
    let half = dim / 2;
    let step = (10000f32).ln() / (half as f32 - 1.0).max(1.0);
    let mut out = Array2::zeros((1, dim));
    for i in 0..half {
        let arg = 1000.0 * w * (-(i as f32) * step).exp();
        out[[0, i]] = arg.sin();
        out[[0, half + i]] = arg.cos();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_mixes_and_embeds_like_diffusers() {
        let mut cond = Array4::from_elem([1, 1, 1, 2], 3.0f32);
        classifier_free_guidance(&mut cond, &Array4::from_elem([1, 1, 1, 2], 1.0), 7.5);
        assert!(cond.iter().all(|v| (*v - 16.0).abs() < 1e-6));
        // diffusers: LatentConsistencyModelPipeline.get_guidance_scale_embedding(tensor([7.5]), 8)
        let e = guidance_scale_embedding(7.5, 8);
        let want = [-0.8512, 0.5627, -0.4352, 0.6816, -0.5248, -0.8267, -0.9003, 0.7317];
        assert!(e.iter().zip(want).all(|(a, b)| (a - b).abs() < 2e-3), "{e:?}");
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
