//! Rectified-flow matching, as in BAGEL: `x_t = (1 - t) x_0 + t eps`, target `v = eps - x_0`,
//! noise at `t = 1`, image at `t = 0`.

mod generate;
mod noise;
mod sampler;
mod timesteps;

pub use generate::{generate, generate_indexed, image_rng};
pub use noise::{extend_normals, host_normal, noisy_latents, velocity_target};
pub use sampler::{EulerSampler, EulerSamplerConfig, Guidance};
pub use timesteps::{TimestepSampling, sample_timesteps, sampling_schedule, shift_timestep};
