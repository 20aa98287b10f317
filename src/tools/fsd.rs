//! The realism figure of `mcm-edge eval`: a Frechet distance between Gaussians fitted to the
//! reference segmenter's pooled features (`[segmenter] features`) of real and of generated images,
//! after FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a
//! Local Nash Equilibrium", Eq. 6), with diagonal covariances:
//!
//! `d^2 = sum_i (mu_a,i - mu_b,i)^2 + (s_a,i - s_b,i)^2`
//!
//! (the Frechet distance of two Gaussians with diagonal covariances; `s` the standard deviations).
//! FID's full covariance needs many more images than features: with the 32 images per half that an
//! evaluation of 64 examples has, and 64 features, a covariance has rank 31, the cross term
//! `tr (S_a S_b)^(1/2)` is badly underestimated, and images that vary less than real ones score
//! better than real images themselves (measured: a 4-step student's base-only images 1.56, real
//! against real 4.35). The diagonal form has no such bias: it grows with every shift of a
//! feature's mean and every change of its spread.
//!
//! Lower is closer to the real images. The estimate depends on how many images it sees (its
//! sampling noise grows as n falls; 64 scored examples split into halves of 32 gave 3.96 between
//! two real halves, against 0.67 for two real sets of 64): `mcm-edge eval` therefore compares the
//! n images of every variant, the real ones of the scored examples (`fsd_ceiling`) included, with
//! one reference set of real images that are not scored (the rest of the data folder), so that
//! every figure sees sets of the same sizes and no generated image meets its own real image.

/// The fewest images on either side of [`fsd`] (two, for a spread).
pub const MIN_IMAGES: usize = 2;

/// Per-feature mean and standard deviation (normalised by n - 1) of `n >= 2` vectors of width F.
fn gaussian(features: &[&[f32]]) -> Vec<(f64, f64)> {
    let n = features.len() as f64;
    (0..features[0].len())
        .map(|j| {
            let mean = features.iter().map(|v| f64::from(v[j])).sum::<f64>() / n;
            let var = features.iter().map(|v| (f64::from(v[j]) - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (mean, var.sqrt())
        })
        .collect()
}

/// The Frechet distance (squared, as FID reports it) between diagonal Gaussians fitted to two sets
/// of feature vectors (module doc), each of at least two vectors of one width F.
///
/// # Panics
/// Fewer than two vectors in a set, or vectors of different widths (callers pass the segmenter's
/// own outputs).
pub fn frechet_distance(a: &[&[f32]], b: &[&[f32]]) -> f64 {
    assert!(a.len() >= 2 && b.len() >= 2, "a Frechet distance needs two vectors per set");
    assert_eq!(a[0].len(), b[0].len(), "feature widths differ");
    gaussian(a).iter().zip(gaussian(b)).map(|((mu_a, s_a), (mu_b, s_b))| (mu_a - mu_b).powi(2) + (s_a - s_b).powi(2)).sum()
}

/// fsd of a set of images (their features, [n, F]) against the `reference` real images' (module
/// doc). None with fewer than [`MIN_IMAGES`] on either side.
pub fn fsd(images: &[Vec<f32>], reference: &[Vec<f32>]) -> Option<f64> {
    if images.len() < MIN_IMAGES || reference.len() < MIN_IMAGES {
        return None;
    }
    Some(frechet_distance(&slices(images), &slices(reference)))
}

/// Borrowed rows of a list of feature vectors.
fn slices(v: &[Vec<f32>]) -> Vec<&[f32]> {
    v.iter().map(Vec::as_slice).collect()
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
    fn images_that_vary_less_than_real_ones_are_not_closer() {
        // the failure of a full-covariance estimate from few images (module doc): here the
        // same-distribution set must beat a collapsed one of the same mean
        let real = normal(32, 64, 0.0, 1.0, 4);
        let (same, collapsed) = (normal(32, 64, 0.0, 1.0, 5), normal(32, 64, 0.0, 0.1, 6));
        let (same, collapsed) = (frechet_distance(&slices(&same), &slices(&real)), frechet_distance(&slices(&collapsed), &slices(&real)));
        assert!(same < collapsed, "same {same}, collapsed {collapsed}");
    }

    #[test]
    fn fsd_tells_a_generator_of_the_real_distribution_from_a_shifted_one() {
        let reference = normal(400, 4, 0.0, 1.0, 6);
        let (real, same, far) = (normal(100, 4, 0.0, 1.0, 9), normal(100, 4, 0.0, 1.0, 7), normal(100, 4, 1.0, 1.5, 8));
        let (ceiling, same, far) = (fsd(&real, &reference).unwrap(), fsd(&same, &reference).unwrap(), fsd(&far, &reference).unwrap());
        // same distribution: sampling noise only, as the ceiling's; shifted: d^2 = 4 + 1
        assert!(same < 0.3 && ceiling < 0.3, "ceiling {ceiling}, same {same}");
        assert!(far > 4.0, "far {far}");
        assert_eq!(fsd(&real[..1], &reference), None);
        assert_eq!(fsd(&real, &reference[..1]), None);
    }
}
