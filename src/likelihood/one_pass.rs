//! Exact log-likelihood in one forward pass (Yadin et al. 2024, arXiv:2402.10095, Theorem 3.2):
//! log p_t(x) = log(p(T+1)/p(t)) + l_t(x) - l_{T+1}(x) + log N(x; 0, I). Levels are drawn
//! uniformly in training, so the prior ratio is zero.
use tch::Tensor;

use crate::classifier::Classifier;
use crate::Result;

/// log N(x; 0, I) per sample: [B] for x: [B, ..].
pub fn log_standard_normal(x: &Tensor) -> Tensor {
    let dim = x.size()[1..].iter().product::<i64>() as f64;
    x.square().flatten(1, -1).sum_dim_intlist(1, false, x.kind()) * -0.5 - 0.5 * dim * (2.0 * std::f64::consts::PI).ln()
}

/// log p_t(x) in nats per sample ([B]) at level `t` (0 = the data density), for x: [B, ..].
pub fn log_prob(model: &Classifier, x: &Tensor, t: usize, labels: Option<&Tensor>) -> Result<Tensor> {
    Ok(log_prob_at_levels(model, x, &[t], labels)?.squeeze_dim(1))
}

/// log p_t(x) in nats ([B, L]) at each of `levels`, all from one forward pass: Theorem 3.2 for
/// every class of the logits, log p_t = log N(x; 0, I) + l_t − l_{T+1}.
pub fn log_prob_at_levels(model: &Classifier, x: &Tensor, levels: &[usize], labels: Option<&Tensor>) -> Result<Tensor> {
    model.check_input(x)?;
    for &t in levels {
        model.schedule().check_level(t)?;
    }
    let logits = tch::no_grad(|| model.logits(x, labels, false))?;
    let index = Tensor::from_slice(&levels.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(x.device());
    let last = logits.size()[1] - 1;
    let f = logits.narrow(1, last, 1) - logits.index_select(1, &index);
    Ok(log_standard_normal(x).unsqueeze(1) - f)
}
