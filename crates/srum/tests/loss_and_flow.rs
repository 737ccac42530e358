//! The SRUM loss against hand-computed values and finite differences; flow matching and the
//! Euler sampler against closed forms.

mod common;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use common::*;
use srum::flow::{EulerSampler, EulerSamplerConfig, Guidance, noisy_latents, velocity_target};
use srum::train::{flow_matching_loss, reward_weighted_loss, srum_loss};

fn t3(v: Vec<f32>, s: [usize; 3]) -> Tensor<Cpu, 3> {
    Tensor::from_data(TensorData::new(v, s), &device())
}

fn scalar(t: Tensor<Cpu, 1>) -> f32 {
    t.into_data().into_vec::<f32>().unwrap()[0]
}

#[test]
fn loss_terms_match_hand_computation() {
    // batch 1, 2 tokens, 2 channels.
    let v = t3(vec![1.0, 2.0, 3.0, 4.0], [1, 2, 2]);
    let target = t3(vec![0.0, 0.0, 1.0, 1.0], [1, 2, 2]);
    let anchor_target = t3(vec![1.0, 1.0, 1.0, 1.0], [1, 2, 2]);
    let reward = Tensor::<Cpu, 2>::from_data(TensorData::new(vec![0.25, 1.0], [1, 2]), &device());
    // squared errors: token0 [1, 4], token1 [4, 9]; weighted: [0.25, 1, 4, 9] -> mean 14.25 / 4
    let r = scalar(reward_weighted_loss(
        v.clone(),
        target.clone(),
        reward.clone(),
    ));
    assert!((r - 14.25 / 4.0).abs() < 1e-6, "{r}");
    // anchor: errors [0, 1, 4, 9] -> mean 3.5
    let c = scalar(flow_matching_loss(v.clone(), anchor_target.clone()));
    assert!((c - 3.5).abs() < 1e-6, "{c}");
    let terms = srum_loss(v, target, reward, anchor_target, 0.5);
    assert!((scalar(terms.total) - (14.25 / 4.0 + 0.5 * 3.5)).abs() < 1e-6);
}

#[test]
fn published_recipe_weight_is_reward_plus_lambda() {
    // With x_anchor = x_gen, L = mean((R + lambda) * err^2).
    let v = t3(vec![0.3, -1.2, 2.0, 0.5, 0.1, -0.4], [1, 3, 2]);
    let target = t3(vec![1.0, 0.0, -1.0, 0.5, 0.2, 0.3], [1, 3, 2]);
    let r = vec![0.1f32, 0.6, 0.9];
    let reward = Tensor::<Cpu, 2>::from_data(TensorData::new(r.clone(), [1, 3]), &device());
    let terms = srum_loss(v.clone(), target.clone(), reward, target.clone(), 0.5);
    let vv = v.into_data().into_vec::<f32>().unwrap();
    let tt = target.into_data().into_vec::<f32>().unwrap();
    let expected: f32 = (0..6)
        .map(|i| (r[i / 2] + 0.5) * (vv[i] - tt[i]).powi(2))
        .sum::<f32>()
        / 6.0;
    assert!((scalar(terms.total) - expected).abs() < 1e-6);
}

#[test]
fn gradient_matches_finite_differences() {
    // d L / d v for L = mean(R |v - a|^2) + lambda mean(|v - b|^2). L is quadratic in v, so
    // central differences are exact up to rounding; compare autodiff against them.
    let dev = device();
    let s = [2, 3, 2];
    let n: usize = s.iter().product();
    let vals = |k: f32| {
        (0..n)
            .map(|i| (i as f32 * 0.37 + k).sin())
            .collect::<Vec<f32>>()
    };
    let (v0, a, b) = (vals(0.0), vals(1.0), vals(2.0));
    let r: Vec<f32> = (0..6).map(|i| 0.1 + 0.15 * i as f32).collect();
    let lambda = 0.5;
    let loss_of = |v: Vec<f32>| -> f64 {
        let t = |x: Vec<f32>| Tensor::<CpuAd, 3>::from_data(TensorData::new(x, s), &dev);
        let rr = Tensor::<CpuAd, 2>::from_data(TensorData::new(r.clone(), [2, 3]), &dev);
        let l = srum_loss(t(v), t(a.clone()), rr, t(b.clone()), lambda).total;
        l.into_data().into_vec::<f32>().unwrap()[0] as f64
    };
    let v = Tensor::<CpuAd, 3>::from_data(TensorData::new(v0.clone(), s), &dev).require_grad();
    let rr = Tensor::<CpuAd, 2>::from_data(TensorData::new(r.clone(), [2, 3]), &dev);
    let ta = Tensor::<CpuAd, 3>::from_data(TensorData::new(a.clone(), s), &dev);
    let tb = Tensor::<CpuAd, 3>::from_data(TensorData::new(b.clone(), s), &dev);
    let grads = srum_loss(v.clone(), ta, rr, tb, lambda).total.backward();
    let g = v
        .grad(&grads)
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let h = 1e-2f32;
    for i in 0..n {
        let (mut p, mut m) = (v0.clone(), v0.clone());
        p[i] += h;
        m[i] -= h;
        let fd = (loss_of(p) - loss_of(m)) / (2.0 * h as f64);
        // And the closed form: 2/N (R (v - a) + lambda (v - b)).
        let closed = 2.0 / n as f64
            * (r[i / 2] as f64 * (v0[i] - a[i]) as f64 + lambda as f64 * (v0[i] - b[i]) as f64);
        assert!(
            (g[i] as f64 - fd).abs() < 2e-4,
            "element {i}: autodiff {} vs finite difference {fd}",
            g[i]
        );
        assert!(
            (g[i] as f64 - closed).abs() < 1e-6,
            "element {i}: autodiff {} vs closed form {closed}",
            g[i]
        );
    }
}

#[test]
fn noising_interpolates_and_target_is_its_time_derivative() {
    let x0 = t3(vec![1.0, -2.0], [1, 1, 2]);
    let eps = t3(vec![3.0, 0.5], [1, 1, 2]);
    let t = Tensor::<Cpu, 1>::from_floats([0.25], &device());
    let xt = noisy_latents(x0.clone(), eps.clone(), t)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(xt, vec![0.75 * 1.0 + 0.25 * 3.0, 0.75 * -2.0 + 0.25 * 0.5]);
    let v = velocity_target(x0, eps)
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(v, vec![2.0, 2.5]);
}

/// The exact velocity field of a point mass at `mu`: `v(x, t) = (x - mu) / t`. Euler steps on
/// it are exact (each step scales `x - mu` by `t_next / t`), so any step count lands on `mu`.
fn point_mass(mu: Tensor<Cpu, 3>) -> impl FnMut(Tensor<Cpu, 3>, Tensor<Cpu, 1>) -> Tensor<Cpu, 3> {
    move |x, t| {
        let [b, _, _] = x.dims();
        (x - mu.clone()) / t.reshape([b, 1, 1])
    }
}

#[test]
fn euler_sampler_lands_on_the_point_mass() {
    let mu = t3(vec![0.5, -1.0, 2.0, 0.0], [1, 2, 2]);
    let noise = t3(vec![1.0, 1.0, -1.0, 3.0], [1, 2, 2]);
    for (steps, shift) in [(1, 1.0), (7, 1.0), (20, 3.0)] {
        let sampler = EulerSampler::new(EulerSamplerConfig {
            steps,
            shift,
            guidance_scale: 1.0,
            ..Default::default()
        });
        let mut field = point_mass(mu.clone());
        let mut calls = 0;
        let x = sampler
            .sample(noise.clone(), |x, t, g| {
                assert_eq!(g, Guidance::Conditional);
                calls += 1;
                Ok(field(x, t))
            })
            .unwrap();
        assert_eq!(calls, steps);
        let got = x.into_data().into_vec::<f32>().unwrap();
        for (g, w) in got.iter().zip([0.5, -1.0, 2.0, 0.0]) {
            assert!((g - w).abs() < 1e-5, "steps {steps} shift {shift}: {got:?}");
        }
    }
}

#[test]
fn sampling_from_a_partly_noised_point_lands_on_the_point_mass_on_the_schedule_grid() {
    let mu = t3(vec![0.5, -1.0], [1, 1, 2]);
    let x_t = t3(vec![0.2, 0.9], [1, 1, 2]);
    let sampler = EulerSampler::new(EulerSamplerConfig {
        steps: 20,
        guidance_scale: 1.0,
        ..Default::default()
    });
    // From 0.43: one step to 0.40, then the grid's 0.40, 0.35, ..., 0.05 (9 starts): 9 steps.
    let mut field = point_mass(mu.clone());
    let mut starts = Vec::new();
    let x = sampler
        .sample_from(x_t.clone(), 0.43, |x, t, _| {
            starts.push(t.clone().into_data().into_vec::<f32>().unwrap()[0]);
            Ok(field(x, t))
        })
        .unwrap();
    assert_eq!(starts.len(), 9, "{starts:?}");
    assert!((starts[0] - 0.43).abs() < 1e-6 && (starts[1] - 0.40).abs() < 1e-6);
    let got = x.into_data().into_vec::<f32>().unwrap();
    assert!(
        (got[0] - 0.5).abs() < 1e-5 && (got[1] + 1.0).abs() < 1e-5,
        "{got:?}"
    );
    // From 1.0 it is the full sample, bit for bit.
    let f = |x: Tensor<Cpu, 3>, _: Tensor<Cpu, 1>, _| Ok(x.mul_scalar(0.5).sin());
    let full = sampler.sample(x_t.clone(), f).unwrap().into_data();
    let from_one = sampler
        .sample_from(x_t.clone(), 1.0, f)
        .unwrap()
        .into_data();
    assert_eq!(full, from_one);
    for bad in [0.0, -0.1, 1.5, f32::NAN] {
        let err = sampler.sample_from(x_t.clone(), bad, f).unwrap_err();
        assert!(err.to_string().contains("t_start"), "{err}");
    }
}

#[test]
fn guidance_extrapolates_between_branches_inside_its_interval() {
    // Conditional mass at mu_c, unconditional at mu_u: with guidance on every step the guided
    // field is the point mass at mu_u + w (mu_c - mu_u).
    let mu_c = t3(vec![1.0, 0.0], [1, 1, 2]);
    let mu_u = t3(vec![0.0, 1.0], [1, 1, 2]);
    let noise = t3(vec![0.3, -0.7], [1, 1, 2]);
    let w = 3.0;
    let run = |interval: (f32, f32)| {
        let mut fc = point_mass(mu_c.clone());
        let mut fu = point_mass(mu_u.clone());
        let mut uncond_calls = 0;
        let x = EulerSampler::new(EulerSamplerConfig {
            steps: 10,
            guidance_scale: w,
            guidance_interval: interval,
            ..Default::default()
        })
        .sample(noise.clone(), |x, t, g| {
            Ok(match g {
                Guidance::Conditional => fc(x, t),
                Guidance::Unconditional => {
                    uncond_calls += 1;
                    fu(x, t)
                }
            })
        })
        .unwrap();
        (x.into_data().into_vec::<f32>().unwrap(), uncond_calls)
    };
    let (x, calls) = run((-1.0, 1.0));
    assert_eq!(calls, 10);
    assert!(
        (x[0] - 3.0).abs() < 1e-5 && (x[1] + 2.0).abs() < 1e-5,
        "{x:?}"
    );
    // Interval (0.4, 1]: start times 1.0, 0.9, ..., 0.5 are guided (6 steps), 0.4 .. 0.1 not.
    let (_, calls) = run((0.4, 1.0));
    assert_eq!(calls, 6);
}

#[test]
fn linear_field_converges_at_first_order() {
    // dx/dt = k x from t = 1 down to 0 gives x(0) = x(1) e^{-k}; Euler's error halves with
    // twice the steps.
    let k = 0.8f32;
    let x1 = t3(vec![1.0], [1, 1, 1]);
    let err = |steps| {
        let x = EulerSampler::new(EulerSamplerConfig {
            steps,
            guidance_scale: 1.0,
            ..Default::default()
        })
        .sample(x1.clone(), |x, _, _| Ok(x.mul_scalar(k)))
        .unwrap();
        (x.into_data().into_vec::<f32>().unwrap()[0] - (-k).exp()).abs()
    };
    let (e10, e20, e40) = (err(10), err(20), err(40));
    assert!(e20 < e10 && e40 < e20);
    assert!(
        (e10 / e20 - 2.0).abs() < 0.2 && (e20 / e40 - 2.0).abs() < 0.2,
        "{e10} {e20} {e40}"
    );
}

#[test]
fn sampler_is_deterministic_and_rejects_zero_steps() {
    let noise = t3(vec![0.1, 0.2, 0.3, 0.4], [2, 1, 2]);
    let f = |x: Tensor<Cpu, 3>, _: Tensor<Cpu, 1>, _| Ok(x.mul_scalar(0.5).sin());
    let s = EulerSampler::default();
    let a = s
        .sample(noise.clone(), f)
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let b = s
        .sample(noise.clone(), f)
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    assert_eq!(a, b);
    let zero = EulerSampler::new(EulerSamplerConfig {
        steps: 0,
        ..Default::default()
    });
    assert!(
        zero.sample(noise, f)
            .unwrap_err()
            .to_string()
            .contains("steps")
    );
}

#[test]
fn cfg_renorm_caps_the_guided_norm() {
    let noise = t3(vec![1.0, 1.0], [1, 1, 2]);
    let mut norms = vec![];
    let s = EulerSampler::new(EulerSamplerConfig {
        steps: 1,
        guidance_scale: 5.0,
        guidance_interval: (-1.0, 1.0),
        cfg_renorm: true,
        ..Default::default()
    });
    // v_c = (1, 0), v_u = (0, 1): guided (5, -4), renormed to norm 1 along (5, -4).
    let x = s
        .sample(noise, |x, _, g| {
            norms.push(());
            let [b, n, _] = x.dims();
            let v = match g {
                Guidance::Conditional => vec![1.0, 0.0],
                Guidance::Unconditional => vec![0.0, 1.0],
            };
            Ok(Tensor::<Cpu, 3>::from_data(
                TensorData::new(v, [b, n, 2]),
                &device(),
            ))
        })
        .unwrap()
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let norm = (41f32).sqrt();
    assert!(
        (x[0] - (1.0 - 5.0 / norm)).abs() < 1e-5 && (x[1] - (1.0 + 4.0 / norm)).abs() < 1e-5,
        "{x:?}"
    );
    assert_eq!(norms.len(), 2);
}

#[test]
fn gradient_through_the_model_matches_finite_differences() {
    // The full path the trainer differentiates: prompt conditioning, the velocity network and
    // the reward-weighted loss with the anchor term, w.r.t. the output bias of the toy's
    // generator (the loss is quadratic in it, so central differences are exact up to rounding).
    use srum::model::{FlowGenerator, Generator};
    use srum_world::toy::{ToyUmm, ToyUmmConfig};
    let dev = device();
    let model = ToyUmmConfig::new().init::<CpuAd>(&dev);
    srum::train::materialize(&model);
    let batch = toy_batch::<CpuAd>(3, 2, &dev);
    let eps = toy_batch::<CpuAd>(4, 2, &dev).latents;
    let t = Tensor::<CpuAd, 1>::from_floats([0.3, 0.8], &dev);
    let loss = |m: &ToyUmm<CpuAd>| {
        let x_t = noisy_latents(batch.latents.clone(), eps.clone(), t.clone());
        let target = velocity_target(batch.latents.clone(), eps.clone());
        let v = m.velocity(x_t, t.clone(), &m.condition(&batch.prompts).unwrap());
        srum_loss(v, target.clone(), batch.reward.clone(), target, 0.5).total
    };
    let grads = loss(&model).backward();
    let params = srum::train::collect_params(&model);
    let bias = params.iter().find(|p| p.path == "gen_out.bias").unwrap();
    let bias_values: Vec<f32> = bias.flat.clone().into_data().into_vec().unwrap();
    let gp = burn::optim::GradientsParams::from_grads(grads, &model);
    let g: Vec<f32> = gp
        .get::<Cpu, 1>(bias.id)
        .unwrap()
        .into_data()
        .into_vec()
        .unwrap();
    let h = 1e-2f32;
    for i in [0usize, 5, 11] {
        let f = |delta: f32| -> f64 {
            let mut values = bias_values.clone();
            values[i] += delta;
            let m = model.clone().map(&mut SetBias(values));
            loss(&m).into_data().into_vec::<f32>().unwrap()[0] as f64
        };
        let fd = (f(h) - f(-h)) / (2.0 * h as f64);
        assert!(
            (g[i] as f64 - fd).abs() < 1e-4 * fd.abs().max(1.0),
            "bias[{i}]: autodiff {} vs finite difference {fd}",
            g[i]
        );
    }
}

/// Replaces the 1-D parameter named `gen_out.bias` (the only 12-element 1-D float parameter).
struct SetBias(Vec<f32>);

impl burn::module::ModuleMapper<CpuAd> for SetBias {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<CpuAd, D>>,
    ) -> burn::module::Param<Tensor<CpuAd, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = if D == 1 && tensor.dims()[0] == self.0.len() {
            Tensor::from_data(
                TensorData::new(self.0.clone(), tensor.dims()),
                &tensor.device(),
            )
        } else {
            tensor
        };
        burn::module::Param::from_mapped_value(id, tensor, mapper)
    }
}
