//! A residual MLP with SiLU for vector data (2-D densities, flattened cubes).
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use super::{
    check_fourier, check_range, fourier_features, labels_or_null, timestep_embedding, Backbone, Head, MAX_BLOCKS,
    MAX_LABELS, MAX_WIDTH,
};
use crate::Result;

/// Settings of [`Mlp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Width of every hidden layer.
    pub hidden: usize,
    /// Number of residual blocks after the input layer.
    pub blocks: usize,
    /// Data labels to condition on (0: unconditional); label `num_labels` is the null label.
    pub num_labels: usize,
    /// Exponents k of the Fourier features sin(π 2^k x), cos(π 2^k x) appended to the input
    /// (see [`fourier_features`]); none when empty.
    pub fourier: Vec<i32>,
}

impl Default for MlpConfig {
    /// The network of the 2-D density runs in docs/results.md.
    fn default() -> Self {
        MlpConfig { hidden: 256, blocks: 3, num_labels: 0, fourier: Vec::new() }
    }
}

impl MlpConfig {
    /// Checks the sizes before anything is built, naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        check_range("backbone.hidden", self.hidden, 1, MAX_WIDTH)?;
        check_range("backbone.blocks", self.blocks, 0, MAX_BLOCKS)?;
        check_range("backbone.num_labels", self.num_labels, 0, MAX_LABELS)?;
        check_fourier(&self.fourier)
    }
}

/// x → SiLU(W x + embeddings) → `blocks` × (h + SiLU(W h)) → head, with the head initialised
/// at zero so an untrained model says p_t = N(0, I) at every level (CDM) or ε̂ = 0 (DDM).
/// Label and (for a DDM) time embeddings are added to the first hidden layer.
pub struct Mlp {
    input: nn::Linear,
    label_embed: Option<nn::Embedding>,
    num_labels: i64,
    time_embed: Option<(nn::Linear, usize)>,
    blocks: Vec<nn::Linear>,
    head: nn::Linear,
    out_shape: Option<Vec<i64>>,
    fourier: Vec<i32>,
}

impl Mlp {
    pub fn new(vs: &nn::Path, cfg: &MlpConfig, data_shape: &[i64], head: Head, timesteps: usize) -> Result<Self> {
        cfg.validate()?;
        let hidden = cfg.hidden as i64;
        let in_dim: i64 = data_shape.iter().product();
        let features = in_dim * (1 + 2 * cfg.fourier.len() as i64);
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        let (num_outputs, time_embed, out_shape) = match head {
            Head::Levels(n) => (n, None, None),
            Head::Noise => (
                in_dim,
                Some((nn::linear(vs / "time_embed", hidden, hidden, Default::default()), timesteps)),
                Some(data_shape.to_vec()),
            ),
        };
        Ok(Mlp {
            input: nn::linear(vs / "input", features, hidden, Default::default()),
            label_embed: (cfg.num_labels > 0)
                .then(|| nn::embedding(vs / "label_embed", cfg.num_labels as i64 + 1, hidden, Default::default())),
            num_labels: cfg.num_labels as i64,
            time_embed,
            blocks: (0..cfg.blocks)
                .map(|i| nn::linear(vs / "blocks" / i, hidden, hidden, Default::default()))
                .collect(),
            head: nn::linear(vs / "head", hidden, num_outputs, zero),
            out_shape,
            fourier: cfg.fourier.clone(),
        })
    }
}

impl Backbone for Mlp {
    fn forward(&self, x: &Tensor, t: Option<&Tensor>, labels: Option<&Tensor>, _train: bool) -> Tensor {
        let batch = x.size()[0];
        let mut h = self.input.forward(&fourier_features(&x.flatten(1, -1), &self.fourier));
        if let Some(embed) = &self.label_embed {
            h += embed.forward(&labels_or_null(labels, self.num_labels, batch, x.device()));
        }
        if let (Some((proj, timesteps)), Some(t)) = (&self.time_embed, t) {
            h += proj.forward(&timestep_embedding(t, *timesteps, proj.ws.size()[1], x.kind()));
        }
        h = h.silu();
        for block in &self.blocks {
            h = &h + block.forward(&h).silu();
        }
        let out = self.head.forward(&h);
        match &self.out_shape {
            Some(shape) => out.reshape([&[batch][..], shape].concat()),
            None => out,
        }
    }
}
