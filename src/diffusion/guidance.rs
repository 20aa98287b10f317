//! Conditioning strength (README "Strength"): how much of the MCM's modulation goes into the
//! noise prediction the sampler steps on.

use ndarray::{Array4, Zip};

/// Largest conditioning strength the sampler accepts (beyond it the extrapolated eps leaves the
/// range the base was trained on); `limits.max_strength` may not exceed it.
pub const MAX_STRENGTH: f32 = 10.0;

/// Conditioning strength (README "Strength"): `eps_base + s * (eps_hat - eps_base)`, in place in
/// `eps_hat`. `s = 0` gives the base alone, 1 the MCM, > 1 extrapolates.
pub fn apply_strength(eps_hat: &mut Array4<f32>, eps_base: &Array4<f32>, strength: f32) {
    Zip::from(eps_hat).and(eps_base).for_each(|h, &b| *h = b + strength * (*h - b));
}

#[cfg(test)]
mod tests {
    use super::*;

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
