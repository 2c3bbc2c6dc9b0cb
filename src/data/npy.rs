//! `.npy` files in and out (float32 or float64), checked for shape and finiteness.
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Reads an N x D or N x C x H x W float array as a Double tensor; rejects other ranks, empty
/// arrays and non-finite values, naming the file and the first bad element.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (shape, values): (Vec<usize>, Vec<f64>) = match ArrayD::<f64>::read_npy(&bytes[..]) {
        Ok(a) => (a.shape().to_vec(), a.iter().copied().collect()),
        Err(err64) => match ArrayD::<f32>::read_npy(&bytes[..]) {
            Ok(a) => (a.shape().to_vec(), a.iter().map(|&v| v as f64).collect()),
            Err(_) => {
                return Err(Error::Data(format!("{}: not a float32/float64 .npy array ({err64})", path.display())))
            }
        },
    };
    if !(shape.len() == 2 || shape.len() == 4) || shape.contains(&0) {
        return Err(Error::Data(format!(
            "{}: array has shape {shape:?}; expected N x D or N x C x H x W with no empty axis",
            path.display()
        )));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let row_len: usize = shape[1..].iter().product();
        return Err(Error::Data(format!(
            "{}: value {} at row {}, element {} is not finite",
            path.display(),
            values[i],
            i / row_len,
            i % row_len
        )));
    }
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::from_slice(&values).reshape(shape))
}

/// Writes a tensor of any shape as float64 `.npy` (atomically: temporary file, then rename).
pub fn write_npy(path: &Path, x: &Tensor) -> Result<()> {
    let shape: Vec<usize> = x.size().iter().map(|&d| d as usize).collect();
    let values = Vec::<f64>::try_from(x.to_kind(Kind::Double).to_device(tch::Device::Cpu).flatten(0, -1))?;
    let array = ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| Error::Shape(e.to_string()))?;
    let mut buf = Vec::new();
    array.write_npy(&mut buf).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    crate::checkpoint::write_atomic(path, &buf)
}
