//! Learning-rate schedules: linear warmup, then constant (the published recipe) or cosine.

use serde::{Deserialize, Serialize};

/// What follows the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LrDecay {
    /// Constant at the peak rate (the published recipe).
    #[default]
    Constant,
    /// Cosine from the peak to `min_lr` at `total_steps`, then `min_lr`.
    Cosine {
        /// Optimizer steps at which the cosine reaches `min_lr`.
        total_steps: u64,
        /// Final learning rate.
        min_lr: f64,
    },
}

/// The learning rate for optimizer step `step` (0-based): linear warmup from `lr / warmup`
/// to `lr` over `warmup` steps, then `decay`. A pure function of the step, so resuming needs
/// only the step count.
pub fn learning_rate(lr: f64, warmup: u64, decay: LrDecay, step: u64) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    match decay {
        LrDecay::Constant => lr,
        LrDecay::Cosine {
            total_steps,
            min_lr,
        } => {
            let span = total_steps.saturating_sub(warmup).max(1);
            let progress = ((step - warmup) as f64 / span as f64).min(1.0);
            min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_constant() {
        assert_eq!(learning_rate(1.0, 4, LrDecay::Constant, 0), 0.25);
        assert_eq!(learning_rate(1.0, 4, LrDecay::Constant, 3), 1.0);
        assert_eq!(learning_rate(1.0, 4, LrDecay::Constant, 1000), 1.0);
        assert_eq!(learning_rate(2.0, 0, LrDecay::Constant, 0), 2.0);
    }

    #[test]
    fn cosine_reaches_min() {
        let d = LrDecay::Cosine {
            total_steps: 10,
            min_lr: 0.1,
        };
        assert!((learning_rate(1.0, 0, d, 0) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 0, d, 5) - 0.55).abs() < 1e-12);
        assert!((learning_rate(1.0, 0, d, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 0, d, 50) - 0.1).abs() < 1e-12);
    }
}
