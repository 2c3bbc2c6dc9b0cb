//! Checks of a model's inputs at its entry points (data shape, levels, labels), shared by the
//! classifier, the denoiser and the model that holds either, so bad input is a named error
//! before it reaches a tensor index.
use tch::{Device, Kind, Tensor};

use crate::schedule::Schedule;
use crate::{Error, Result};

/// Checks that `x` is [B, ..data_shape].
pub(crate) fn check_shape(data_shape: &[i64], x: &Tensor) -> Result<()> {
    let size = x.size();
    if size.len() != data_shape.len() + 1 || size[1..] != data_shape[..] {
        return Err(Error::Shape(format!(
            "input has shape {size:?}, the model expects [B, {}]",
            data_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

/// Checks per-sample levels `t` before they index the schedule's tables or the logits: [B],
/// every one finite and in 0..=T+1 (a DDM may be asked at fractional levels). Values are read
/// only on the CPU: reading them back from a GPU would wait for its queue on every call, so
/// there the callers check what they build levels from (the samplers' grids, the training
/// draws, a level asked for by number).
pub(crate) fn check_levels(t: &Tensor, batch: i64, schedule: &Schedule) -> Result<()> {
    if t.size() != [batch] {
        return Err(Error::Shape(format!("levels t have shape {:?}, expected [{batch}]", t.size())));
    }
    if t.device() != Device::Cpu {
        return Ok(());
    }
    let last = schedule.num_classes() as f64 - 1.0;
    let t = t.to_kind(Kind::Double);
    let outside = t.isfinite().logical_not().logical_or(&t.lt(0.0)).logical_or(&t.gt(last));
    if batch > 0 && outside.any().int64_value(&[]) != 0 {
        let bad = t.masked_select(&outside).double_value(&[0]);
        return Err(Error::Config(format!("level {bad} is outside 0..={last}")));
    }
    Ok(())
}

/// Checks data labels before they reach a label embedding: [B], Int64, each in
/// 0..=`num_labels` (`num_labels` being the null label), values on the CPU only (as levels).
/// An unconditional model (`num_labels` = 0) ignores labels.
pub(crate) fn check_labels(labels: Option<&Tensor>, batch: i64, num_labels: usize) -> Result<()> {
    let Some(labels) = labels.filter(|_| num_labels > 0) else { return Ok(()) };
    if labels.size() != [batch] || labels.kind() != Kind::Int64 {
        return Err(Error::Shape(format!(
            "labels are {:?} of shape {:?}, expected Int64 of shape [{batch}]",
            labels.kind(),
            labels.size()
        )));
    }
    if labels.device() != Device::Cpu {
        return Ok(());
    }
    let outside = labels.lt(0).logical_or(&labels.gt(num_labels as i64));
    if batch > 0 && outside.any().int64_value(&[]) != 0 {
        let bad = labels.masked_select(&outside).int64_value(&[0]);
        return Err(Error::Config(format!("label {bad} is outside 0..={num_labels} ({num_labels}: the null label)")));
    }
    Ok(())
}
