//! Noise schedule: beta_t and alpha_bar_t = prod_{s<=t} (1 - beta_s) (DDPM, Ho et al. 2020), with
//! the beta schedules diffusers names; the same formulas as `train/mcm_train/schedule.py`. And the
//! timestep grid of a step count: format 1's trailing grid, a distilled base's own grid, or (format
//! 2) the grids of diffusers' DDIM, Euler and LCM schedulers, with their `timestep_spacing`.

use crate::contract::{SamplerKind, ScheduleInfo};

/// A `[schedule]` the device cannot build, or a step count it cannot sample with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// `num_train_timesteps` is 0.
    #[error("[schedule] num_train_timesteps must be positive")]
    NoTimesteps,
    /// A `beta_schedule` other than the three known ones.
    #[error("[schedule] beta_schedule {0:?}: expected linear, scaled_linear or squaredcos_cap_v2")]
    UnknownBetaSchedule(String),
    /// A beta outside (0, 1).
    #[error("[schedule] beta {0} is outside (0, 1)")]
    BetaOutOfRange(f64),
    /// A sampling step count outside `1..=T`.
    #[error("steps must be in 1..={max}, got {steps}")]
    Steps { steps: usize, max: usize },
    /// A distilled base asked for another step count than the one it was distilled for.
    #[error("steps {steps}: this base was distilled for {distilled} steps only ([schedule] timesteps)")]
    NotDistilledFor { steps: usize, distilled: usize },
    /// An LCM asked for more steps than its distillation grid has.
    #[error("steps {steps}: this latent consistency model samples at most {max} steps (original_inference_steps)")]
    LcmSteps { steps: usize, max: usize },
}

/// How a step count becomes timesteps (format 2; diffusers' `timestep_spacing`, Lin et al. 2024, Table 2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spacing {
    /// `round(T - i T / n) - 1`, format 1's rounding (half away from zero).
    Trailing,
    /// diffusers' trailing: numpy's rounding (half to even).
    TrailingEven,
    /// `i * (T / n) + steps_offset`, reversed (integer division, as DDIMScheduler).
    Leading { offset: usize },
    /// `round(i (T - 1) / (n - 1))`, reversed.
    Linspace,
    /// LCMScheduler: n of the `original` grid `k (i + 1) - 1` (k = T / original), evenly by index.
    Lcm { original: usize },
}

/// Where each step goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Prev {
    /// To the next timestep of the grid, and to alpha_bar = 1 after the last (format 1, Euler, LCM).
    NextInGrid,
    /// To `t - T / n` (DDIMScheduler), and to `final_alpha_bar` below 0.
    Stride { final_alpha_bar: f64 },
}

/// The noise schedule of a model.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// alpha_bar_t for t in `0..T`, decreasing in (0, 1).
    pub alpha_bar: Vec<f64>,
    /// A distilled base's grid (`[schedule] timesteps`), noisiest first.
    pub distilled: Option<Vec<usize>>,
    spacing: Spacing,
    prev: Prev,
    /// diffusers' Euler on the trailing or linspace grid starts from `sigma_max` noise.
    sigma_max_start: bool,
}

impl Schedule {
    /// Build the schedule from `[schedule]` of model.toml of `format` (1: format 1's trailing DDIM;
    /// 2: diffusers' grids for the sampler, `timestep_spacing`, `steps_offset`, `set_alpha_to_one`).
    ///
    /// # Errors
    /// Unknown `beta_schedule`, T = 0, or betas outside (0, 1).
    pub fn new(info: &ScheduleInfo, format: u32) -> Result<Self, ScheduleError> {
        let t_max = info.num_train_timesteps;
        if t_max == 0 {
            return Err(ScheduleError::NoTimesteps);
        }
        let lin = |a: f64, b: f64, i: usize| if t_max == 1 { a } else { a + (b - a) * i as f64 / (t_max - 1) as f64 };
        let betas: Vec<f64> = match info.beta_schedule.as_str() {
            "linear" => (0..t_max).map(|i| lin(info.beta_start, info.beta_end, i)).collect(),
            "scaled_linear" => (0..t_max).map(|i| lin(info.beta_start.sqrt(), info.beta_end.sqrt(), i).powi(2)).collect(),
            "squaredcos_cap_v2" => {
                // Nichol & Dhariwal 2021, Eq. 17.
                let f = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..t_max)
                    .map(|i| (1.0 - f((i + 1) as f64 / t_max as f64) / f(i as f64 / t_max as f64)).min(0.999))
                    .collect()
            }
            other => return Err(ScheduleError::UnknownBetaSchedule(other.to_string())),
        };
        if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
            return Err(ScheduleError::BetaOutOfRange(*b));
        }
        let alpha_bar = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect::<Vec<f64>>();
        let spacing = match (format, info.timestep_spacing.as_deref()) {
            (1, _) => Spacing::Trailing,
            (_, Some("leading")) => Spacing::Leading { offset: info.steps_offset },
            (_, Some("linspace")) => Spacing::Linspace,
            (_, Some("lcm")) => Spacing::Lcm { original: info.original_inference_steps.unwrap_or(50).max(1) },
            _ => Spacing::TrailingEven,
        };
        let prev = match (format, info.sampler) {
            (2, SamplerKind::Ddim) => Prev::Stride { final_alpha_bar: if info.set_alpha_to_one { 1.0 } else { alpha_bar[0] } },
            _ => Prev::NextInGrid,
        };
        let sigma_max_start = format >= 2 && info.sampler == SamplerKind::Euler && matches!(spacing, Spacing::TrailingEven | Spacing::Linspace);
        Ok(Self { alpha_bar, distilled: info.timesteps.clone(), spacing, prev, sigma_max_start })
    }

    /// The scale of `x_T` against unit noise, given the first step's alpha_bar: 1, except for
    /// diffusers' Euler on the trailing or linspace grid, whose `init_noise_sigma` is `sigma_max`
    /// rather than `sqrt(sigma_max^2 + 1)`: in `x_t` terms, `sqrt(1 - alpha_bar)` (reproduced so
    /// that an imported SD-Turbo samples as in diffusers).
    pub fn init_noise_scale(&self, first_alpha_bar: f64) -> f64 {
        if self.sigma_max_start { (1.0 - first_alpha_bar).sqrt() } else { 1.0 }
    }

    /// T, the number of training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.alpha_bar.len()
    }

    /// The step counts this schedule samples with: a distilled base's one count, or None (any in 1..=T).
    pub fn distilled_steps(&self) -> Option<usize> {
        self.distilled.as_ref().map(Vec::len)
    }

    /// DDIM timesteps for `steps` sampling steps: a distilled base's own grid (`[schedule]
    /// timesteps`, only for its count), else [`Self::ddim_timesteps`]. Entries as there.
    ///
    /// # Errors
    /// [`ScheduleError::NotDistilledFor`] for another count on a distilled base;
    /// [`ScheduleError::Steps`] as in [`Self::ddim_timesteps`].
    pub fn timesteps(&self, steps: usize) -> Result<Vec<(usize, f64, f64)>, ScheduleError> {
        match &self.distilled {
            Some(grid) if grid.len() != steps => Err(ScheduleError::NotDistilledFor { steps, distilled: grid.len() }),
            Some(grid) => Ok(self.with_alpha_bar(grid)),
            None if self.spacing == Spacing::Trailing => self.ddim_timesteps(steps),
            None => self.diffusers_timesteps(steps),
        }
    }

    /// The grid of a format 2 schedule for `steps` steps, as diffusers' scheduler computes it
    /// (`set_timesteps`), with each step's alpha_bar_prev ([`Prev`]).
    ///
    /// # Errors
    /// [`ScheduleError::Steps`] for 0 or more than T steps; [`ScheduleError::LcmSteps`] for more
    /// steps than an LCM's distillation grid has.
    fn diffusers_timesteps(&self, steps: usize) -> Result<Vec<(usize, f64, f64)>, ScheduleError> {
        let t_max = self.num_train_timesteps();
        if steps == 0 || steps > t_max {
            return Err(ScheduleError::Steps { steps, max: t_max });
        }
        let ts: Vec<usize> = match self.spacing {
            Spacing::Trailing | Spacing::TrailingEven => {
                let ratio = t_max as f64 / steps as f64;
                (0..steps).map(|i| ((t_max as f64 - i as f64 * ratio).round_ties_even() as usize).saturating_sub(1)).collect()
            }
            Spacing::Leading { offset } => (0..steps).rev().map(|i| (i * (t_max / steps) + offset).min(t_max - 1)).collect(),
            Spacing::Linspace if steps == 1 => vec![0],
            Spacing::Linspace => (0..steps).rev().map(|i| (i as f64 * (t_max - 1) as f64 / (steps - 1) as f64).round_ties_even() as usize).collect(),
            Spacing::Lcm { original } => {
                if steps > original {
                    return Err(ScheduleError::LcmSteps { steps, max: original });
                }
                let k = t_max / original;
                (0..steps).map(|i| k * (original - i * original / steps) - 1).collect()
            }
        };
        Ok(match self.prev {
            Prev::NextInGrid => self.with_alpha_bar(&ts),
            Prev::Stride { final_alpha_bar } => ts
                .iter()
                .map(|&t| {
                    let prev = t.checked_sub(t_max / steps).map_or(final_alpha_bar, |p| self.alpha_bar[p]);
                    (t, self.alpha_bar[t], prev)
                })
                .collect(),
        })
    }

    /// `(t, alpha_bar_t, alpha_bar_prev)` for a grid, alpha_bar_prev = 1 after the last step.
    fn with_alpha_bar(&self, ts: &[usize]) -> Vec<(usize, f64, f64)> {
        ts.iter()
            .enumerate()
            .map(|(i, &t)| {
                let prev = ts.get(i + 1).map_or(1.0, |&p| self.alpha_bar[p]);
                (t, self.alpha_bar[t], prev)
            })
            .collect()
    }

    /// DDIM timesteps for `steps` sampling steps, "trailing" spacing (Lin et al. 2024, "Common
    /// Diffusion Noise Schedules and Sample Steps are Flawed", Table 2; diffusers'
    /// `timestep_spacing="trailing"`): `t_i = round(T - i * T / steps) - 1` for i in `0..steps`, so
    /// sampling always starts at the noisiest timestep T - 1, even with very few steps. Each entry
    /// is `(timestep, alpha_bar_t, alpha_bar_prev)`, with alpha_bar_prev = 1 after the last step.
    ///
    /// # Errors
    /// [`ScheduleError::Steps`]: `steps` is 0 or larger than T.
    pub fn ddim_timesteps(&self, steps: usize) -> Result<Vec<(usize, f64, f64)>, ScheduleError> {
        let t_max = self.num_train_timesteps();
        if steps == 0 || steps > t_max {
            return Err(ScheduleError::Steps { steps, max: t_max });
        }
        let ratio = t_max as f64 / steps as f64;
        let ts: Vec<usize> = (0..steps).map(|i| ((t_max as f64 - i as f64 * ratio).round() as usize).saturating_sub(1)).collect();
        Ok(self.with_alpha_bar(&ts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: &str) -> ScheduleInfo {
        ScheduleInfo {
            beta_schedule: kind.into(),
            beta_start: 1e-4,
            beta_end: 0.02,
            num_train_timesteps: 1000,
            prediction_type: "epsilon".into(),
            timesteps: None,
            sampler: SamplerKind::Ddim,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: true,
            clip_sample_range: None,
            original_inference_steps: None,
            timestep_scaling: None,
        }
    }

    #[test]
    fn linear_alpha_bar_matches_closed_form() {
        let s = Schedule::new(&info("linear"), 1).unwrap();
        assert!((s.alpha_bar[0] - (1.0 - 1e-4)).abs() < 1e-12);
        // Reference value from torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=float64)).
        assert!((s.alpha_bar[999] - 4.0358e-5).abs() < 1e-8, "{}", s.alpha_bar[999]);
        assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn all_kinds_build_and_unknown_is_refused() {
        for kind in ["linear", "scaled_linear", "squaredcos_cap_v2"] {
            let s = Schedule::new(&info(kind), 1).unwrap();
            assert_eq!(s.num_train_timesteps(), 1000);
            assert!(s.alpha_bar.iter().all(|a| *a > 0.0 && *a < 1.0));
        }
        assert!(Schedule::new(&info("sigmoid"), 1).unwrap_err().to_string().contains("sigmoid"));
    }

    #[test]
    fn ddim_timesteps_are_trailing_and_end_at_one() {
        let s = Schedule::new(&info("linear"), 1).unwrap();
        let ts = s.ddim_timesteps(10).unwrap();
        let t: Vec<usize> = ts.iter().map(|x| x.0).collect();
        assert_eq!(t, vec![999, 899, 799, 699, 599, 499, 399, 299, 199, 99]);
        assert_eq!(ts[0].2, s.alpha_bar[899]);
        assert_eq!(ts[9].2, 1.0);
        // One step starts from pure noise (t = T - 1), not from t = 0.
        assert_eq!(s.ddim_timesteps(1).unwrap(), vec![(999, s.alpha_bar[999], 1.0)]);
        let all: Vec<usize> = s.ddim_timesteps(1000).unwrap().iter().map(|x| x.0).collect();
        assert_eq!(all, (0..1000).rev().collect::<Vec<_>>());
        assert!(s.ddim_timesteps(0).is_err());
        assert!(s.ddim_timesteps(1001).is_err());
    }

    #[test]
    fn a_distilled_grid_is_used_as_is_and_only_for_its_count() {
        let s = Schedule::new(&ScheduleInfo { timesteps: Some(vec![999, 562, 249, 62]), ..info("linear") }, 1).unwrap();
        let ts = s.timesteps(4).unwrap();
        assert_eq!(ts.iter().map(|x| x.0).collect::<Vec<_>>(), [999, 562, 249, 62]);
        assert_eq!((ts[1].2, ts[3].2), (s.alpha_bar[249], 1.0));
        assert_eq!(s.distilled_steps(), Some(4));
        let err = s.timesteps(20).unwrap_err();
        assert_eq!(err, ScheduleError::NotDistilledFor { steps: 20, distilled: 4 });
        assert!(err.to_string().contains("distilled for 4 steps"), "{err}");
        // an undistilled base samples any count on the trailing grid
        assert_eq!(Schedule::new(&info("linear"), 1).unwrap().timesteps(10).unwrap(), s.ddim_timesteps(10).unwrap());
    }

    #[test]
    fn diffusers_grids_match_their_schedulers() {
        // The values diffusers 0.42's schedulers give (set_timesteps) for T = 1000.
        let sd = |spacing: &str, sampler, alpha_one| ScheduleInfo {
            beta_schedule: "scaled_linear".into(),
            beta_start: 0.00085,
            beta_end: 0.012,
            timestep_spacing: Some(spacing.into()),
            steps_offset: 1,
            set_alpha_to_one: alpha_one,
            sampler,
            ..info("linear")
        };
        let grid = |s: &Schedule, n| s.timesteps(n).unwrap().iter().map(|x| x.0).collect::<Vec<_>>();
        // DDIMScheduler, Stable Diffusion 1.5's settings: leading + 1, stride prev, alpha_bar_0 at the end
        let ddim = Schedule::new(&sd("leading", SamplerKind::Ddim, false), 2).unwrap();
        assert_eq!(grid(&ddim, 3), [667, 334, 1]);
        let steps = ddim.timesteps(3).unwrap();
        assert_eq!((steps[0].2, steps[2].2), (ddim.alpha_bar[334], ddim.alpha_bar[0]));
        // trailing, numpy's round half to even: 1000 - 62.5 = 937.5 -> 938, 812.5 -> 812 (then - 1)
        let trailing = Schedule::new(&sd("trailing", SamplerKind::Euler, true), 2).unwrap();
        assert_eq!(grid(&trailing, 16)[..4], [999, 937, 874, 811]);
        assert_eq!(grid(&trailing, 2), [999, 499]);
        assert_eq!(trailing.timesteps(2).unwrap()[1].2, 1.0);
        let linspace = Schedule::new(&sd("linspace", SamplerKind::Ddim, true), 2).unwrap();
        assert_eq!(grid(&linspace, 4), [999, 666, 333, 0]);
        let lcm = Schedule::new(&ScheduleInfo { original_inference_steps: Some(50), timestep_scaling: Some(10.0), ..sd("lcm", SamplerKind::Lcm, true) }, 2).unwrap();
        assert_eq!(grid(&lcm, 4), [999, 759, 499, 259]);
        assert_eq!(grid(&lcm, 1), [999]);
        assert_eq!(lcm.timesteps(51).unwrap_err(), ScheduleError::LcmSteps { steps: 51, max: 50 });
    }
}
