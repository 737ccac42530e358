//! The backend this build of `srum` runs on, chosen by cargo feature. With several enabled the
//! first of cuda, vulkan, wgpu, flex wins, so `--features cuda` on top of the default flex
//! builds a CUDA binary.

#[cfg(not(any(
    feature = "flex",
    feature = "cuda",
    feature = "wgpu",
    feature = "vulkan"
)))]
compile_error!("srum-cli needs a backend: enable one of the features flex, cuda, wgpu, vulkan");

/// The inference backend.
#[cfg(feature = "cuda")]
pub type Back = burn::backend::Cuda;
/// The inference backend.
#[cfg(all(feature = "vulkan", not(feature = "cuda")))]
pub type Back = burn::backend::Vulkan;
/// The inference backend.
#[cfg(all(feature = "wgpu", not(any(feature = "cuda", feature = "vulkan"))))]
pub type Back = burn::backend::Wgpu;
/// The inference backend.
#[cfg(all(
    feature = "flex",
    not(any(feature = "cuda", feature = "vulkan", feature = "wgpu"))
))]
pub type Back = burn::backend::Flex;

/// The training backend.
pub type Ad = burn::backend::Autodiff<Back>;

/// The backend's name, for logs and `srum --version`-like reports.
pub const NAME: &str = if cfg!(feature = "cuda") {
    "cuda"
} else if cfg!(feature = "vulkan") {
    "vulkan"
} else if cfg!(feature = "wgpu") {
    "wgpu"
} else {
    "flex"
};
