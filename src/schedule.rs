//! Noise schedule: beta_t and alpha_bar_t = prod_{s<=t} (1 - beta_s) (DDPM, Ho et al. 2020), with
//! the beta schedules diffusers names; the same formulas as `train/mcm_train/schedule.py`.

use crate::model_info::ScheduleInfo;

/// The noise schedule of a model.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// alpha_bar_t for t in `0..T`, decreasing in (0, 1).
    pub alpha_bar: Vec<f64>,
}

impl Schedule {
    /// Build the schedule from `[schedule]` of model.toml.
    ///
    /// # Errors
    /// Unknown `beta_schedule`, T = 0, or betas outside (0, 1).
    pub fn new(info: &ScheduleInfo) -> Result<Self, String> {
        let t_max = info.num_train_timesteps;
        if t_max == 0 {
            return Err("[schedule] num_train_timesteps must be positive".into());
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
            other => {
                return Err(format!(
                    "[schedule] beta_schedule {other:?}: expected linear, scaled_linear or squaredcos_cap_v2"
                ));
            }
        };
        if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
            return Err(format!("[schedule] beta {b} is outside (0, 1)"));
        }
        let alpha_bar = betas
            .iter()
            .scan(1.0, |acc, b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        Ok(Self { alpha_bar })
    }

    /// T, the number of training timesteps.
    pub fn num_train_timesteps(&self) -> usize {
        self.alpha_bar.len()
    }

    /// DDIM timesteps for `steps` sampling steps, "leading" spacing as in diffusers'
    /// `DDIMScheduler`: `t_i = i * (T / steps)`, from the largest down to 0. Each entry is
    /// `(timestep, alpha_bar_t, alpha_bar_prev)`, with alpha_bar_prev = 1 after the last step.
    ///
    /// # Errors
    /// `steps` is 0 or larger than T.
    pub fn ddim_timesteps(&self, steps: usize) -> Result<Vec<(usize, f64, f64)>, String> {
        let t_max = self.num_train_timesteps();
        if steps == 0 || steps > t_max {
            return Err(format!("steps must be in 1..={t_max}, got {steps}"));
        }
        let ratio = t_max / steps;
        Ok((0..steps)
            .rev()
            .map(|i| {
                let t = i * ratio;
                let prev = if i == 0 { 1.0 } else { self.alpha_bar[t - ratio] };
                (t, self.alpha_bar[t], prev)
            })
            .collect())
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
        }
    }

    #[test]
    fn linear_alpha_bar_matches_closed_form() {
        let s = Schedule::new(&info("linear")).unwrap();
        assert!((s.alpha_bar[0] - (1.0 - 1e-4)).abs() < 1e-12);
        // Reference value from torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=float64)).
        assert!((s.alpha_bar[999] - 4.0358e-5).abs() < 1e-8, "{}", s.alpha_bar[999]);
        assert!(s.alpha_bar.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn all_kinds_build_and_unknown_is_refused() {
        for kind in ["linear", "scaled_linear", "squaredcos_cap_v2"] {
            let s = Schedule::new(&info(kind)).unwrap();
            assert_eq!(s.num_train_timesteps(), 1000);
            assert!(s.alpha_bar.iter().all(|a| *a > 0.0 && *a < 1.0));
        }
        assert!(Schedule::new(&info("sigmoid")).unwrap_err().contains("sigmoid"));
    }

    #[test]
    fn ddim_timesteps_are_leading_and_end_at_one() {
        let s = Schedule::new(&info("linear")).unwrap();
        let ts = s.ddim_timesteps(10).unwrap();
        let t: Vec<usize> = ts.iter().map(|x| x.0).collect();
        assert_eq!(t, vec![900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
        assert_eq!(ts[0].2, s.alpha_bar[800]);
        assert_eq!(ts[9].2, 1.0);
        assert!(s.ddim_timesteps(0).is_err());
        assert!(s.ddim_timesteps(1001).is_err());
    }
}
