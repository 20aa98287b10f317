//! The multistep consistency sampler of Latent Consistency Models (Luo et al. 2023, "Latent
//! Consistency Models", Alg. 1 and Eq. 4; diffusers' `LCMScheduler.step`).

use ndarray::{Array4, Zip};

use super::noise::NoiseSource;

/// The boundary-condition scalings `(c_skip, c_out)` at `timestep` (Song et al. 2023,
/// "Consistency Models", Sec. 3, with sigma_data = 0.5 and the timestep scaled by `scaling`, 10 in
/// diffusers): `c_skip = 0.25 / ((s t)^2 + 0.25)`, `c_out = s t / sqrt((s t)^2 + 0.25)`.
pub fn boundary_scalings(timestep: usize, scaling: f64) -> (f32, f32) {
    let (sigma_data, st) = (0.5f64, timestep as f64 * scaling);
    let d = st * st + sigma_data * sigma_data;
    ((sigma_data * sigma_data / d) as f32, (st / d.sqrt()) as f32)
}

/// One LCM step from `x_t` (alpha_bar `ab_t`) to the next timestep (alpha_bar `ab_prev`), in place.
///
/// `x_t`, `eps` are `[B, C, H, W]`. The consistency function's output `denoised = c_out x_0 +
/// c_skip x_t` (x_0 predicted from eps, clipped to `clip` when given); on every step but the
/// `last`, the next sample is noised again to `ab_prev` with fresh noise from `noise`:
/// `sqrt(ab_prev) denoised + sqrt(1 - ab_prev) z`. On the last step `x_t` becomes `denoised`.
#[allow(clippy::too_many_arguments)] // the scheduler's state: the step's alpha_bars and settings
pub fn lcm_step(
    x_t: &mut Array4<f32>,
    eps: &Array4<f32>,
    timestep: usize,
    (ab_t, ab_prev): (f64, f64),
    scaling: f64,
    clip: Option<[f32; 2]>,
    last: bool,
    noise: &mut dyn NoiseSource,
) {
    let (c_skip, c_out) = boundary_scalings(timestep, scaling);
    let (sa_t, sb_t) = (ab_t.sqrt() as f32, (1.0 - ab_t).sqrt() as f32);
    Zip::from(&mut *x_t).and(eps).for_each(|x, &e| {
        let x_0 = (*x - sb_t * e) / sa_t;
        let x_0 = clip.map_or(x_0, |[lo, hi]| x_0.clamp(lo, hi));
        *x = c_out * x_0 + c_skip * *x;
    });
    if !last {
        let z = noise.next(x_t.dim().into());
        let (sa, sb) = (ab_prev.sqrt() as f32, (1.0 - ab_prev).sqrt() as f32);
        Zip::from(&mut *x_t).and(&z).for_each(|x, &z| *x = sa * *x + sb * z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::noise::Replay;

    #[test]
    fn scalings_follow_the_boundary_condition() {
        // At t = 0 the consistency function is the identity (c_skip 1, c_out 0).
        assert_eq!(boundary_scalings(0, 10.0), (1.0, 0.0));
        let (skip, out) = boundary_scalings(999, 10.0);
        assert!(skip < 1e-7 && (out - 1.0).abs() < 1e-7, "{skip} {out}");
    }

    #[test]
    fn exact_eps_denoises_and_renoises_with_the_given_noise() {
        let x_0 = Array4::from_shape_fn([1, 1, 2, 2], |(_, _, y, x)| (y as f32 - x as f32) * 0.5);
        let eps = Array4::from_shape_fn([1, 1, 2, 2], |(_, _, y, x)| 0.3 * (y + 2 * x) as f32 - 0.4);
        let (ab_t, ab_prev) = (0.2f64, 0.7f64);
        let x_t = &x_0 * (ab_t.sqrt() as f32) + &eps * ((1.0 - ab_t).sqrt() as f32);
        let mut last = x_t.clone();
        lcm_step(&mut last, &eps, 999, (ab_t, ab_prev), 10.0, None, true, &mut Replay::new(vec![]));
        assert!(last.iter().zip(x_0.iter()).all(|(a, b)| (a - b).abs() < 1e-4));
        let z = Array4::from_elem([1, 1, 2, 2], 1.0f32);
        let mut mid = x_t.clone();
        let mut replay = Replay::new(vec![z.clone()]);
        lcm_step(&mut mid, &eps, 999, (ab_t, ab_prev), 10.0, None, false, &mut replay);
        let want = &last * (ab_prev.sqrt() as f32) + &z * ((1.0 - ab_prev).sqrt() as f32);
        assert!(mid.iter().zip(want.iter()).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!((replay.misses(), replay.left()), (0, 0));
    }
}
