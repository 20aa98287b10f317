//! The realism figure of `mcm-edge eval`: the Frechet distance between Gaussians fitted to the
//! reference segmenter's pooled features (`[segmenter] features`) of real and of generated images,
//! as FID does with Inception features (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
//! Update Rule Converge to a Local Nash Equilibrium", Eq. 6):
//!
//! `d^2 = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`
//!
//! Lower is closer to the real images. A Frechet distance estimated from n samples is biased
//! upwards, more so for small n: compare figures only between sets of the same size. [`fsd`]
//! therefore splits the examples into two halves and compares the generated images of each half
//! with the real images of the other, so that a generated image never meets its own real image
//! and every figure, the ceiling between the two real halves ([`fsd_ceiling`]) included, compares
//! sets of n/2.

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// The fewest examples [`fsd`] needs (two per half, for a covariance).
pub const MIN_EXAMPLES: usize = 4;

/// Mean [F] and covariance [F, F] (normalised by n - 1) of `n >= 2` feature vectors of width F.
fn gaussian(features: &[&[f32]]) -> (DVector<f64>, DMatrix<f64>) {
    let (n, f) = (features.len(), features[0].len());
    let x = DMatrix::from_fn(n, f, |i, j| f64::from(features[i][j]));
    let mean = x.row_mean().transpose();
    let centred = DMatrix::from_fn(n, f, |i, j| x[(i, j)] - mean[j]);
    let cov = centred.transpose() * &centred / (n as f64 - 1.0);
    (mean, cov)
}

/// The symmetric positive semi-definite square root of a symmetric matrix (negative eigenvalues,
/// rounding errors of a singular covariance, clamped to 0).
fn sqrt_psd(m: DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(m);
    let roots = eig.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// The Frechet distance (squared, as FID reports it) between Gaussians fitted to two sets of
/// feature vectors, each of at least two vectors of one width F.
///
/// `tr (S_a S_b)^(1/2)` is computed as `tr (S_a^(1/2) S_b S_a^(1/2))^(1/2)`, the square root of a
/// symmetric matrix, which has the same eigenvalues and needs no general eigensolver.
///
/// # Panics
/// Fewer than two vectors in a set, or vectors of different widths (callers pass the segmenter's
/// own outputs).
pub fn frechet_distance(a: &[&[f32]], b: &[&[f32]]) -> f64 {
    assert!(a.len() >= 2 && b.len() >= 2, "a Frechet distance needs two vectors per set");
    let ((mu_a, s_a), (mu_b, s_b)) = (gaussian(a), gaussian(b));
    let root_a = sqrt_psd(s_a.clone());
    let cross = sqrt_psd(&root_a * &s_b * &root_a).trace();
    ((mu_a - mu_b).norm_squared() + s_a.trace() + s_b.trace() - 2.0 * cross).max(0.0)
}

/// The two halves of a list: even and odd positions.
fn halves(v: &[Vec<f32>]) -> (Vec<&[f32]>, Vec<&[f32]>) {
    let pick = |r: usize| v.iter().skip(r).step_by(2).map(Vec::as_slice).collect();
    (pick(0), pick(1))
}

/// fsd of `generated` images against the `real` ones of the same examples (same order): the mean
/// of the distances from each half's generated images to the other half's real images (module
/// doc). None with fewer than [`MIN_EXAMPLES`] examples.
pub fn fsd(generated: &[Vec<f32>], real: &[Vec<f32>]) -> Option<f64> {
    if generated.len() < MIN_EXAMPLES || real.len() != generated.len() {
        return None;
    }
    let ((gen_even, gen_odd), (real_even, real_odd)) = (halves(generated), halves(real));
    Some(0.5 * (frechet_distance(&gen_even, &real_odd) + frechet_distance(&gen_odd, &real_even)))
}

/// The fsd of the real images themselves: the distance between the two real halves, the floor a
/// generator's [`fsd`] can reach on this set. None with fewer than [`MIN_EXAMPLES`] examples.
pub fn fsd_ceiling(real: &[Vec<f32>]) -> Option<f64> {
    if real.len() < MIN_EXAMPLES {
        return None;
    }
    let (even, odd) = halves(real);
    Some(frechet_distance(&even, &odd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::Noise;

    /// n vectors of width f: N(shift, scale^2) in every coordinate.
    fn normal(n: usize, f: usize, shift: f32, scale: f32, seed: u64) -> Vec<Vec<f32>> {
        let z = Noise::new(seed).randn([1, 1, n, f]);
        z.outer_iter().next().unwrap().index_axis(ndarray::Axis(0), 0).outer_iter().map(|row| row.iter().map(|v| shift + scale * v).collect()).collect()
    }

    fn slices(v: &[Vec<f32>]) -> Vec<&[f32]> {
        v.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn distance_of_a_set_to_itself_is_zero() {
        let a = normal(50, 6, 0.0, 1.0, 1);
        assert!(frechet_distance(&slices(&a), &slices(&a)) < 1e-9);
    }

    #[test]
    fn distance_matches_the_closed_form_of_two_gaussians() {
        // for N(mu_a, s_a^2 I) and N(mu_b, s_b^2 I) in f dimensions: f (mu_a - mu_b)^2 + f (s_a - s_b)^2
        let (n, f) = (20_000, 3);
        let (a, b) = (normal(n, f, 0.0, 1.0, 2), normal(n, f, 0.5, 2.0, 3));
        let want = f as f64 * (0.25 + 1.0);
        let got = frechet_distance(&slices(&a), &slices(&b));
        assert!((got - want).abs() < 0.1, "got {got}, want {want}");
    }

    #[test]
    fn a_singular_covariance_gives_a_finite_distance() {
        // 4 vectors in 16 dimensions: rank-3 covariances
        let (a, b) = (normal(4, 16, 0.0, 1.0, 4), normal(4, 16, 0.0, 1.0, 5));
        let d = frechet_distance(&slices(&a), &slices(&b));
        assert!(d.is_finite() && d > 0.0, "{d}");
    }

    #[test]
    fn split_fsd_tells_a_generator_of_the_real_distribution_from_a_shifted_one() {
        let real = normal(200, 4, 0.0, 1.0, 6);
        let same = normal(200, 4, 0.0, 1.0, 7);
        let far = normal(200, 4, 1.0, 1.5, 8);
        let (same, far, floor) = (fsd(&same, &real).unwrap(), fsd(&far, &real).unwrap(), fsd_ceiling(&real).unwrap());
        // same distribution: the estimator's bias at n/2 = 100, as the ceiling's; shifted: d^2 = 4 + 1
        assert!(same < 2.0 * floor && floor < 2.0 * same, "ceiling {floor}, same {same}");
        assert!(far > 4.0 && far > 10.0 * same, "far {far}, same {same}");
        assert_eq!(fsd(&real[..3], &real[..3]), None);
        assert_eq!(fsd_ceiling(&real[..3]), None);
    }
}
