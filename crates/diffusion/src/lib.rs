//! gen-diffusion: the continuous-latent generators VQGAN-LC serves (DiT-LC, SiT-LC, LDM-LC), the
//! Gaussian diffusion of DiT/LDM and the transport of SiT, and the samplers, written once over the
//! [`Denoiser`] trait and shared by the three networks.

pub mod denoiser;
pub mod dit;
pub mod embed;
pub mod gaussian;
pub mod ldm;
pub mod load;
pub mod noise;
pub mod sampling;
pub mod sit;
pub mod train;
pub mod transport;

pub use denoiser::{Denoiser, GuideChannels, Guided};
pub use dit::{Dit, DitConfig};
pub use gaussian::{GaussianDiffusion, VarianceKind};
pub use noise::{Noise, ReplayNoise, SeededNoise};
