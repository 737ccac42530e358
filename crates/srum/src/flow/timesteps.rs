//! Training timesteps and the sampling schedule, both through BAGEL's timestep shift.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// The timestep shift `t' = s t / (1 + (s - 1) t)`; `s > 1` moves mass toward noise (t = 1).
pub fn shift_timestep(t: f32, shift: f32) -> f32 {
    shift * t / (1.0 + (shift - 1.0) * t)
}

/// How training timesteps are drawn before the shift.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum TimestepSampling {
    /// `t = sigmoid(mean + std * n)`, `n ~ N(0, 1)`: BAGEL's default with mean 0, std 1.
    LogitNormal {
        /// Location of the logit.
        mean: f32,
        /// Scale of the logit.
        std: f32,
    },
    /// `t ~ U(0, 1)`.
    Uniform,
}

impl Default for TimestepSampling {
    fn default() -> Self {
        Self::LogitNormal {
            mean: 0.0,
            std: 1.0,
        }
    }
}

/// Draws `n` training timesteps in `(0, 1)`, shifted by `shift`.
pub fn sample_timesteps<R: Rng>(
    rng: &mut R,
    n: usize,
    sampling: TimestepSampling,
    shift: f32,
) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let t = match sampling {
                TimestepSampling::LogitNormal { mean, std } => {
                    let z: f32 = StandardNormal.sample(rng);
                    1.0 / (1.0 + (-(mean + std * z)).exp())
                }
                TimestepSampling::Uniform => rng.random::<f32>(),
            };
            shift_timestep(t, shift)
        })
        .collect()
}

/// The reference sampling schedule for `steps` Euler steps: `linspace(1, 0, steps + 1)` passed
/// through the shift. BAGEL's `num_timesteps = N` is `steps = N - 1` here.
pub fn sampling_schedule(steps: usize, shift: f32) -> Vec<f32> {
    (0..=steps)
        .map(|i| {
            let t = if steps == 0 {
                1.0
            } else {
                1.0 - i as f32 / steps as f32
            };
            shift_timestep(t, shift)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn shift_fixes_endpoints_and_moves_mass_to_noise() {
        assert_eq!(shift_timestep(0.0, 3.0), 0.0);
        assert_eq!(shift_timestep(1.0, 3.0), 1.0);
        assert_eq!(shift_timestep(0.5, 1.0), 0.5);
        assert!((shift_timestep(0.5, 3.0) - 0.75).abs() < 1e-7);
    }

    #[test]
    fn logit_normal_is_symmetric_around_half() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let t = sample_timesteps(&mut rng, 20_000, TimestepSampling::default(), 1.0);
        let mean = t.iter().sum::<f32>() / t.len() as f32;
        assert!(t.iter().all(|&x| x > 0.0 && x < 1.0));
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let above = t.iter().filter(|&&x| x > 0.5).count() as f32 / t.len() as f32;
        assert!((above - 0.5).abs() < 0.02);
    }

    #[test]
    fn schedule_runs_from_noise_to_data() {
        let s = sampling_schedule(4, 1.0);
        assert_eq!(s, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        let s = sampling_schedule(4, 3.0);
        assert_eq!((s[0], s[4]), (1.0, 0.0));
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
