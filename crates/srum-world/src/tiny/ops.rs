//! The reference model's element-wise and layout operations, with kernels of their own on the
//! flex backend.
//!
//! On flex 0.21 these are where a training step of the 0.5M-parameter model spends the time
//! that is not matrix products: GELU and its backward go through libm's scalar `erff`, the
//! softmax under autodiff through five separate ops whose backward computes `exp` again (flex
//! fuses it only without autodiff, and there the kernel here is still faster at the model's
//! rows of 81), and splitting and
//! merging attention heads through a copy that walks a 4-D view one element at a time (forward,
//! and again in the backward of every `reshape` of a transposed gradient). With the `flex`
//! feature, `Flex` and `Autodiff<Flex>` (f32, no autodiff checkpointing) run each as one pass of
//! a kernel written here: erf and exp as branch-free polynomials the compiler vectorises
//! (within about one f32 rounding of the exact functions), the softmax's backward from its
//! output, permutations as runs of copies; split over rayon's threads. Every other backend,
//! dtype or checkpointing strategy gets burn's ops, which compute the same functions.

use burn::tensor::{Tensor, backend::Backend};

/// The exact (erf) GELU, `x Φ(x)`, as `burn::tensor::activation::gelu`.
///
/// Shapes: any; the output has the input's.
pub(crate) fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::run(kernels::Gelu, x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    burn::tensor::activation::gelu(x)
}

/// The softmax over the last dimension, as `burn::tensor::activation::softmax(x, D - 1)`.
///
/// Shapes: any; the output has the input's.
pub(crate) fn softmax_last<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = {
        let cols = x.dims()[D - 1];
        match flex::run(kernels::Softmax { cols }, x) {
            Ok(y) => return y,
            Err(x) => x,
        }
    };
    burn::tensor::activation::softmax(x, D - 1)
}

/// `x` with its dimensions in the order `perm` (output dimension `i` is input dimension
/// `perm[i]`), as `x.permute(perm)`, laid out contiguously on flex.
///
/// Shapes: `x`: `[d0, d1, d2, d3]` to `[d_perm[0], ..., d_perm[3]]`.
pub(crate) fn permute<B: Backend>(x: Tensor<B, 4>, perm: [usize; 4]) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    let x = match flex::run(kernels::Permute::new(x.dims(), perm), x) {
        Ok(y) => return y,
        Err(x) => x,
    };
    x.permute(perm)
}

/// The scalar arithmetic of the kernels, shared by every instruction set.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
mod math {
    /// Where [`erf`] switches from the odd polynomial to `1 - exp(q(|x|))`.
    const SPLIT: f32 = 0.921875;
    /// `erf(x)` is 1 in f32 beyond this.
    const SATURATE: f32 = 4.0;
    /// `erf(x) = x + x p(x²)` on `|x| <= SPLIT` (least squares on Chebyshev nodes in f64, then
    /// rounded; largest error 8.5e-8 against the f64 erf).
    const SMALL: [f32; 6] = [
        0.128_379_15,
        -0.376_125_34,
        0.112_822_4,
        -0.026_781_753,
        0.005_015_084_5,
        -0.000_610_103_37,
    ];
    /// `ln(erfc(t))` on `SPLIT <= t <= SATURATE` (the same fit; largest error of `erf` 9.2e-8).
    const LARGE: [f32; 9] = [
        0.000_309_046_27,
        -1.130_191_9,
        -0.631_891_13,
        -0.110_024_296,
        0.026_392_484,
        -0.004_750_56,
        0.000_595_094_87,
        -4.588_020_2e-5,
        1.629_382_3e-6,
    ];
    const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// `1 / √(2π)`.
    const INV_SQRT_2PI: f32 = 0.398_942_3;

    #[inline(always)]
    fn horner<const N: usize>(c: &[f32; N], x: f32) -> f32 {
        let mut r = c[N - 1];
        let mut i = N - 1;
        while i > 0 {
            i -= 1;
            r = r * x + c[i];
        }
        r
    }

    /// `e^x`: Cephes' single-precision range reduction and polynomial, without branches;
    /// relative error below 2.5e-7 on `[-87, 88]`, 0 below -87.3 (where `e^x` < 1.2e-38),
    /// clamped above 88.3.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        let c = x.clamp(-87.3, 88.3);
        // Round to nearest by the 1.5 * 2^23 shift, which needs no rounding instruction.
        let shift = 12_582_912.0_f32;
        let n = (c * std::f32::consts::LOG2_E + shift) - shift;
        let r = c - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = [
            0.5,
            1.666_666_5e-1,
            4.166_579_6e-2,
            8.333_452e-3,
            1.398_2e-3,
            1.987_569_1e-4,
        ];
        let y = horner(&p, r) * (r * r) + r + 1.0;
        let y = y * f32::from_bits(((n as i32 + 127) << 23) as u32);
        if x < -87.3 { 0.0 } else { y }
    }

    /// `erf(x)`, within about one f32 rounding.
    #[inline(always)]
    pub(super) fn erf(x: f32) -> f32 {
        let t = x.abs();
        let small = x + x * horner(&SMALL, x * x);
        let large = (1.0 - exp(horner(&LARGE, t.min(SATURATE)))).copysign(x);
        if t <= SPLIT { small } else { large }
    }

    /// `x Φ(x)`.
    #[inline(always)]
    pub(super) fn gelu(x: f32) -> f32 {
        0.5 * x * (1.0 + erf(x * INV_SQRT_2))
    }

    /// `d/dx [x Φ(x)] = Φ(x) + x φ(x)`, times the incoming gradient `g`.
    #[inline(always)]
    pub(super) fn gelu_grad(x: f32, g: f32) -> f32 {
        let cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2));
        let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
        g * (cdf + x * pdf)
    }

    /// Sum with eight running partial sums, which the compiler can keep in one vector.
    #[inline(always)]
    pub(super) fn sum(x: impl Iterator<Item = f32>) -> f32 {
        let mut acc = [0f32; 8];
        for (i, v) in x.enumerate() {
            acc[i % 8] += v;
        }
        acc.iter().sum()
    }

    /// One row's softmax into `y`.
    #[inline(always)]
    pub(super) fn softmax_row(x: &[f32], y: &mut [f32]) {
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (y, &x) in y.iter_mut().zip(x) {
            *y = exp(x - max);
        }
        let total = sum(y.iter().copied());
        for y in y.iter_mut() {
            *y /= total;
        }
    }

    /// One row's softmax backward from its output `y`: `y (g - Σ g y)`.
    #[inline(always)]
    pub(super) fn softmax_row_grad(y: &[f32], g: &[f32], dx: &mut [f32]) {
        let dot = sum(y.iter().zip(g).map(|(y, g)| y * g));
        for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
            *dx = y * (g - dot);
        }
    }
}

/// The kernels over contiguous f32 slices, compiled for AVX-512 and AVX2 besides the baseline
/// and chosen at run time (the arithmetic is the same, so is every result), split over rayon's
/// threads.
#[cfg(feature = "flex")]
mod kernels {
    use rayon::prelude::*;

    use super::math;

    /// Elements per rayon task: small tensors stay on one thread.
    const CHUNK: usize = 16 * 1024;

    /// What the backward of an op reads besides the gradient.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Saves {
        Input,
        Output,
        Nothing,
    }

    /// A one-input op: its output shape, forward and backward over contiguous buffers.
    pub(super) trait Kernel: Clone + std::fmt::Debug + Send + Sync + 'static {
        const SAVES: Saves;
        fn out_dims(&self, input: &[usize]) -> Vec<usize>;
        fn forward(&self, x: &[f32], y: &mut [f32]);
        /// `dx` from the gradient of the output `g` and what [`Kernel::SAVES`] names (empty
        /// for `Nothing`).
        fn backward(&self, saved: &[f32], g: &[f32], dx: &mut [f32]);
    }

    macro_rules! multiversion {
        ($name:ident, ($($arg:ident: $ty:ty),*), $body:block) => {
            fn $name($($arg: $ty),*) {
                #[inline(always)]
                fn body($($arg: $ty),*) $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f")]
                    fn avx512($($arg: $ty),*) {
                        body($($arg),*)
                    }
                    #[target_feature(enable = "avx2")]
                    fn avx2($($arg: $ty),*) {
                        body($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has the instructions `avx512` is compiled for.
                        return unsafe { avx512($($arg),*) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has the instructions `avx2` is compiled for.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                body($($arg),*)
            }
        };
    }

    multiversion!(gelu_chunk, (x: &[f32], y: &mut [f32]), {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = math::gelu(x);
        }
    });

    multiversion!(gelu_grad_chunk, (x: &[f32], g: &[f32], y: &mut [f32]), {
        for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
            *y = math::gelu_grad(x, g);
        }
    });

    multiversion!(softmax_rows, (cols: usize, x: &[f32], y: &mut [f32]), {
        for (x, y) in x.chunks(cols).zip(y.chunks_mut(cols)) {
            math::softmax_row(x, y);
        }
    });

    multiversion!(softmax_grad_rows, (cols: usize, y: &[f32], g: &[f32], dx: &mut [f32]), {
        for ((y, g), dx) in y.chunks(cols).zip(g.chunks(cols)).zip(dx.chunks_mut(cols)) {
            math::softmax_row_grad(y, g, dx);
        }
    });

    /// The exact GELU.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Gelu;

    impl Kernel for Gelu {
        const SAVES: Saves = Saves::Input;

        fn out_dims(&self, input: &[usize]) -> Vec<usize> {
            input.to_vec()
        }

        fn forward(&self, x: &[f32], y: &mut [f32]) {
            y.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(y, x)| gelu_chunk(x, y));
        }

        fn backward(&self, x: &[f32], g: &[f32], dx: &mut [f32]) {
            dx.par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(dx, (x, g))| gelu_grad_chunk(x, g, dx));
        }
    }

    /// The softmax over rows of `cols` elements.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Softmax {
        pub(super) cols: usize,
    }

    impl Softmax {
        /// Whole rows per rayon task.
        fn rows_chunk(&self) -> usize {
            self.cols * (CHUNK / self.cols.max(1)).max(1)
        }
    }

    impl Kernel for Softmax {
        const SAVES: Saves = Saves::Output;

        fn out_dims(&self, input: &[usize]) -> Vec<usize> {
            input.to_vec()
        }

        fn forward(&self, x: &[f32], y: &mut [f32]) {
            if self.cols == 0 {
                return;
            }
            let c = self.rows_chunk();
            y.par_chunks_mut(c)
                .zip(x.par_chunks(c))
                .for_each(|(y, x)| softmax_rows(self.cols, x, y));
        }

        fn backward(&self, y: &[f32], g: &[f32], dx: &mut [f32]) {
            if self.cols == 0 {
                return;
            }
            let c = self.rows_chunk();
            dx.par_chunks_mut(c)
                .zip(y.par_chunks(c).zip(g.par_chunks(c)))
                .for_each(|(dx, (y, g))| softmax_grad_rows(self.cols, y, g, dx));
        }
    }

    /// A permutation of a 4-D tensor's dimensions, written out contiguously.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Permute {
        dims: [usize; 4],
        perm: [usize; 4],
    }

    impl Permute {
        /// # Panics
        /// When `perm` is not a permutation of `0..4`.
        pub(super) fn new(dims: [usize; 4], perm: [usize; 4]) -> Self {
            let mut seen = [false; 4];
            for &p in &perm {
                assert!(
                    p < 4 && !seen[p],
                    "permute: {perm:?} is not a permutation of 0..4"
                );
                seen[p] = true;
            }
            Self { dims, perm }
        }

        /// Copies `x` (of `dims`) into `y` in the order `perm`.
        fn copy(dims: [usize; 4], perm: [usize; 4], x: &[f32], y: &mut [f32]) {
            let mut strides = [0usize; 4];
            let mut s = 1;
            for i in (0..4).rev() {
                strides[i] = s;
                s *= dims[i];
            }
            let od = perm.map(|p| dims[p]);
            let os = perm.map(|p| strides[p]);
            let block = od[1] * od[2] * od[3];
            if block == 0 {
                return;
            }
            y.par_chunks_mut(block).enumerate().for_each(|(i0, y)| {
                let mut k = 0;
                for i1 in 0..od[1] {
                    for i2 in 0..od[2] {
                        let base = i0 * os[0] + i1 * os[1] + i2 * os[2];
                        let row = &mut y[k..k + od[3]];
                        if os[3] == 1 {
                            row.copy_from_slice(&x[base..base + od[3]]);
                        } else {
                            for (i3, v) in row.iter_mut().enumerate() {
                                *v = x[base + i3 * os[3]];
                            }
                        }
                        k += od[3];
                    }
                }
            });
        }
    }

    impl Kernel for Permute {
        const SAVES: Saves = Saves::Nothing;

        fn out_dims(&self, _: &[usize]) -> Vec<usize> {
            self.perm.map(|p| self.dims[p]).to_vec()
        }

        fn forward(&self, x: &[f32], y: &mut [f32]) {
            Self::copy(self.dims, self.perm, x, y);
        }

        fn backward(&self, _: &[f32], g: &[f32], dx: &mut [f32]) {
            let mut inverse = [0; 4];
            for (i, &p) in self.perm.iter().enumerate() {
                inverse[p] = i;
            }
            Self::copy(self.perm.map(|p| self.dims[p]), inverse, g, dx);
        }
    }
}

/// The dispatch to the kernels for `Flex` and `Autodiff<Flex>` tensors.
#[cfg(feature = "flex")]
mod flex {
    use std::any::{Any, TypeId};

    use burn::backend::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
    use burn::backend::flex::{Flex, FlexTensor, Layout};
    use burn::tensor::backend::{Backend, BackendTypes};
    use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};

    use super::kernels::{Kernel, Saves};

    /// The autodiff tensor type of `Autodiff<Flex>` (burn-autodiff does not export its name).
    type AdTensor = <Autodiff<Flex> as BackendTypes>::FloatTensorPrimitive;

    /// Moves a value of a type the caller has checked by `TypeId` into that type.
    fn cast<T: 'static, U: 'static>(t: T) -> U {
        match (Box::new(t) as Box<dyn Any>).downcast::<U>() {
            Ok(u) => *u,
            Err(_) => unreachable!("the caller compared the TypeIds"),
        }
    }

    /// `t` with its elements in order in one buffer of exactly its size (flex copies only a
    /// view: a permuted, offset or partial one).
    fn contiguous(t: FlexTensor) -> FlexTensor {
        t.to_contiguous()
    }

    fn slice(t: &FlexTensor) -> &[f32] {
        t.as_slice::<f32>().expect("a contiguous f32 tensor")
    }

    fn tensor(data: Vec<f32>, dims: Vec<usize>) -> FlexTensor {
        FlexTensor::new(
            Bytes::from_elems(data),
            Layout::contiguous(Shape::from(dims)),
            DType::F32,
        )
    }

    fn forward<K: Kernel>(k: &K, x: FlexTensor) -> FlexTensor {
        let x = contiguous(x);
        let src = slice(&x);
        let dims = k.out_dims(x.layout().shape());
        let mut y = vec![0f32; src.len()];
        k.forward(src, &mut y);
        tensor(y, dims)
    }

    /// The backward step of kernel `K`.
    #[derive(Debug)]
    struct Step<K>(K);

    impl<K: Kernel> Backward<Flex, 1> for Step<K> {
        /// What `K` saves, and the input's dimensions.
        type State = (Option<FlexTensor>, Vec<usize>);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let (saved, dims) = ops.state;
            let k = self.0;
            unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
                let grad = contiguous(grad);
                let mut dx = vec![0f32; dims.iter().product()];
                // What was saved is contiguous already: the forward's input made so, or its output.
                k.backward(saved.as_ref().map_or(&[], slice), slice(&grad), &mut dx);
                tensor(dx, dims)
            });
        }
    }

    fn autodiff<K: Kernel>(k: K, x: AdTensor) -> AdTensor {
        match Step(k.clone())
            .prepare::<NoCheckpointing>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = contiguous(x.primitive);
                let dims = input.layout().shape().to_vec();
                let y = forward(&k, input.clone());
                let saved = match K::SAVES {
                    Saves::Input => Some(input),
                    Saves::Output => Some(y.clone()),
                    Saves::Nothing => None,
                };
                prep.finish((saved, dims), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(&k, x.primitive)),
        }
    }

    /// Kernel `k` on `x` when `B` is `Flex` or `Autodiff<Flex>` and `x` is f32; `x` back
    /// otherwise. `D2` must be the rank of `k`'s output.
    pub(super) fn run<K: Kernel, B: Backend, const D: usize, const D2: usize>(
        k: K,
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D2>, Tensor<B, D>> {
        let b = TypeId::of::<B>();
        let flex = b == TypeId::of::<Flex>();
        if x.dtype() != DType::F32 || !(flex || b == TypeId::of::<Autodiff<Flex>>()) {
            return Err(x);
        }
        let p = x.into_primitive().tensor();
        let y: B::FloatTensorPrimitive = if flex {
            cast(forward(&k, cast(p)))
        } else {
            cast(autodiff(k, cast(p)))
        };
        Ok(Tensor::from_primitive(TensorPrimitive::Float(y)))
    }
}

#[cfg(test)]
mod tests {
    use super::math;

    /// The exact values in f64, from libm's erf (fdlibm's, within an ulp of f64).
    fn gelu_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    fn gelu_grad_f64(x: f64) -> f64 {
        0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
            + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    }

    fn grid() -> impl Iterator<Item = f32> {
        (-200_000..=200_000).map(|i| i as f32 * 6e-5)
    }

    #[test]
    fn erf_is_within_an_f32_rounding_of_the_exact_one() {
        let mut worst = 0f64;
        for x in grid() {
            let got = math::erf(x) as f64;
            worst = worst.max((got - libm::erf(x as f64)).abs());
        }
        // f32's spacing just below 1 is 6e-8.
        assert!(worst < 1.2e-7, "erf off by {worst}");
        assert_eq!(math::erf(0.0), 0.0);
        assert_eq!(math::erf(10.0), 1.0);
        assert_eq!(math::erf(-1e30), -1.0);
    }

    #[test]
    fn exp_has_a_relative_error_below_3e_7() {
        let mut worst = 0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 * 1e-3;
            let want = (x as f64).exp();
            worst = worst.max((math::exp(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "exp off by {worst} relative");
        assert_eq!(math::exp(-1e4), 0.0);
        assert_eq!(math::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(math::exp(0.0), 1.0);
    }

    #[test]
    fn gelu_and_its_derivative_match_the_f64_function() {
        let (mut worst, mut worst_grad) = (0f64, 0f64);
        for x in grid().chain([-30.0, -12.0, 12.0, 30.0, 1e6]) {
            let scale = (x.abs() as f64).max(1.0);
            worst = worst.max((math::gelu(x) as f64 - gelu_f64(x as f64)).abs() / scale);
            let g = math::gelu_grad(x, 1.0) as f64;
            worst_grad = worst_grad.max((g - gelu_grad_f64(x as f64)).abs() / scale);
        }
        assert!(worst < 2e-7, "gelu off by {worst}");
        assert!(worst_grad < 3e-7, "gelu' off by {worst_grad}");
        assert!(math::gelu(f32::NAN).is_nan());
        assert!(math::gelu_grad(f32::NAN, 1.0).is_nan());
        assert_eq!(math::gelu(f32::INFINITY), f32::INFINITY);
    }

    /// Each op on `Flex` and `Autodiff<Flex>` (the kernels) against burn's own ops, output and
    /// gradient, on a contiguous tensor, on a transposed view, and on one large enough to be
    /// split over threads.
    #[cfg(feature = "flex")]
    mod flex {
        use burn::backend::{Autodiff, Flex};
        use burn::tensor::{Distribution, Tensor, TensorData};

        type Ad = Autodiff<Flex>;

        /// Largest difference of the outputs and of the input gradients (against a random
        /// output gradient) between `ours` and `theirs`.
        fn compare<const D: usize, const D2: usize>(
            x: Tensor<Flex, D>,
            ours: impl Fn(Tensor<Ad, D>) -> Tensor<Ad, D2>,
            theirs: impl Fn(Tensor<Ad, D>) -> Tensor<Ad, D2>,
        ) -> (f32, f32) {
            // The output gradient reaches the op contiguous, and as a transposed view.
            let run = |f: &dyn Fn(Tensor<Ad, D>) -> Tensor<Ad, D2>, transposed: bool| {
                let xa = Tensor::<Ad, D>::from_inner(x.clone()).require_grad();
                let y = f(xa.clone());
                let out = y.clone();
                let y = if transposed {
                    y.swap_dims(0, D2 - 1)
                } else {
                    y
                };
                // The same output gradient for both.
                let g = seeded(y.dims());
                let grads = (y * g).sum().backward();
                (out.inner(), xa.grad(&grads).expect("a gradient"))
            };
            let mut worst = (0f32, 0f32);
            for transposed in [false, true] {
                let (y1, g1) = run(&ours, transposed);
                let (y2, g2) = run(&theirs, transposed);
                if y1.dims().contains(&0) {
                    assert_eq!((y1.dims(), g1.dims()), (y2.dims(), g2.dims()));
                    continue;
                }
                let dy = (y1 - y2).abs().max().into_scalar();
                let dg = (g1 - g2).abs().max().into_scalar();
                worst = (worst.0.max(dy), worst.1.max(dg));
            }
            worst
        }

        /// A fixed pseudo-random tensor of `dims`.
        fn seeded<const D: usize>(dims: [usize; D]) -> Tensor<Ad, D> {
            let n: usize = dims.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 3.0)
                .collect();
            Tensor::from_data(TensorData::new(v, dims), &Default::default())
        }

        fn inputs(shape: [usize; 3], std: f64) -> Vec<Tensor<Flex, 3>> {
            let x = Tensor::<Flex, 3>::random(
                shape,
                Distribution::Normal(0.0, std),
                &Default::default(),
            );
            // Contiguous, transposed, and a slice (an offset into a larger buffer).
            vec![
                x.clone(),
                x.clone().swap_dims(0, 2),
                x.narrow(1, 1, shape[1] - 1),
            ]
        }

        #[test]
        fn gelu_matches_burn() {
            for shape in [[7, 5, 3], [30, 70, 100], [0, 5, 3]] {
                for x in inputs(shape, 3.0) {
                    let (dy, dg) = compare(x, super::super::gelu, burn::tensor::activation::gelu);
                    assert!(dy < 2e-6 && dg < 2e-6, "gelu differs: {dy}, gradient {dg}");
                }
            }
            // Exact values at a few points, without autodiff.
            let x = Tensor::<Flex, 1>::from_data(
                TensorData::from([0.0f32, 1.0, -1.0]),
                &Default::default(),
            );
            let y: Vec<f32> = super::super::gelu(x).into_data().to_vec().expect("f32");
            for (a, b) in y.iter().zip([0.0, 0.841_344_7, -0.158_655_26]) {
                assert!((a - b).abs() < 1e-7, "{a} vs {b}");
            }
        }

        #[test]
        fn softmax_matches_burn() {
            // (burn's own softmax refuses an empty last dimension; the kernel returns it empty.)
            let empty = Tensor::<Ad, 3>::zeros([3, 5, 0], &Default::default());
            assert_eq!(super::super::softmax_last(empty).dims(), [3, 5, 0]);
            let no_rows = Tensor::<Flex, 3>::zeros([0, 5, 3], &Default::default());
            for x in inputs([7, 5, 3], 4.0)
                .into_iter()
                .chain(inputs([30, 70, 81], 4.0))
                .chain([no_rows])
            {
                let (dy, dg) = compare(x, super::super::softmax_last, |x| {
                    burn::tensor::activation::softmax(x, 2)
                });
                assert!(
                    dy < 1e-6 && dg < 1e-6,
                    "softmax differs: {dy}, gradient {dg}"
                );
            }
            // Masked scores (burn-nn's -1e4) get exactly zero weight; rows sum to one.
            let x = Tensor::<Ad, 2>::from_data(
                TensorData::from([[1.0f32, -1.0e4, 2.0], [0.5, 0.5, -1.0e4]]),
                &Default::default(),
            );
            let y: Vec<f32> = super::super::softmax_last(x)
                .into_data()
                .to_vec()
                .expect("f32");
            assert_eq!((y[1], y[5]), (0.0, 0.0));
            assert!((y[0] + y[2] - 1.0).abs() < 1e-6 && (y[3] - 0.5).abs() < 1e-7);
            // A row with every key masked attends to all alike, as burn's softmax does.
            let x =
                Tensor::<Ad, 2>::from_data(TensorData::from([[-1.0e4f32; 3]]), &Default::default());
            let y: Vec<f32> = super::super::softmax_last(x)
                .into_data()
                .to_vec()
                .expect("f32");
            assert!(y.iter().all(|v| (v - 1.0 / 3.0).abs() < 1e-7), "{y:?}");
        }

        #[test]
        fn permute_matches_burn() {
            for shape in [[2, 3, 4, 5], [32, 81, 4, 24], [2, 0, 4, 5]] {
                let x = Tensor::<Flex, 4>::random(
                    shape,
                    Distribution::Normal(0.0, 1.0),
                    &Default::default(),
                );
                for perm in [[0, 2, 1, 3], [0, 2, 3, 1], [3, 1, 0, 2]] {
                    let (dy, dg) = compare(
                        x.clone(),
                        |x| super::super::permute(x, perm),
                        |x| x.permute(perm),
                    );
                    // A permutation moves values; it computes nothing.
                    assert_eq!((dy, dg), (0.0, 0.0), "permute {perm:?}");
                }
            }
        }
    }
}
