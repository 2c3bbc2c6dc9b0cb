//! What a classifier ([`crate::classifier::Classifier`]) or a denoiser
//! ([`crate::denoiser::Denoiser`]) is built from: the noise levels, the backbone, the data's
//! shape and the Gaussian base, without the model kind, which only the aggregate
//! [`crate::model::ModelConfig`] holds (it makes one of these for the kind it names).
use crate::nets::BackboneConfig;
use crate::schedule::ScheduleConfig;

/// The parts of a network over noise levels.
#[derive(Clone, Debug, PartialEq)]
pub struct NetworkConfig {
    /// Noise levels.
    pub schedule: ScheduleConfig,
    /// The network.
    pub backbone: BackboneConfig,
    /// Shape of one data point, without the batch axis (`[D]` or `[C, H, W]`).
    pub data_shape: Vec<i64>,
    /// Gaussians of the base added to the network's outputs (one, or one per class); `None`:
    /// no base.
    pub base_components: Option<usize>,
}
