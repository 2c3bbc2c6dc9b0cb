//! `.npy` files in and out (float32 or float64), checked for shape and finiteness. Reading
//! parses the header itself, so a header claiming more values than the file holds is an error
//! before anything is allocated for them (format: numpy's `NEP 1`, versions 1.0 to 3.0).
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Reads an N x D or N x C x H x W float array as a Double tensor; rejects other ranks, empty
/// arrays and non-finite values, naming the file and the first bad element.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, path)
}

/// [`read_npy`] on the bytes of a file already read; `path` names it in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<Tensor> {
    parse(bytes).map_err(|msg| Error::Data(format!("{}: {msg}", path.display())))
}

fn parse(bytes: &[u8]) -> std::result::Result<Tensor, String> {
    let header = Header::parse(bytes)?;
    let shape = header.shape;
    if !(shape.len() == 2 || shape.len() == 4) || shape.contains(&0) {
        return Err(format!("array has shape {shape:?}; expected N x D or N x C x H x W with no empty axis"));
    }
    // The values the header claims must be exactly what follows it: checked before any
    // allocation, so a header claiming 10^12 rows is an error, not an out-of-memory abort.
    let data = &bytes[header.data_start..];
    let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let needed = count.and_then(|c| c.checked_mul(header.item_size));
    match needed {
        Some(needed) if needed == data.len() => {}
        Some(needed) if needed > data.len() => {
            return Err(format!(
                "truncated: the header says {shape:?} ({needed} bytes of data), the file holds {} bytes",
                data.len()
            ))
        }
        Some(needed) => {
            return Err(format!(
                "the header says {shape:?} ({needed} bytes of data), the file holds {} bytes: trailing data",
                data.len()
            ))
        }
        None => return Err(format!("the header's shape {shape:?} overflows")),
    }
    let values: Vec<f64> = if header.item_size == 4 {
        data.chunks_exact(4)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3]];
                (if header.big_endian { f32::from_be_bytes(b) } else { f32::from_le_bytes(b) }) as f64
            })
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| {
                let b = [c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]];
                if header.big_endian {
                    f64::from_be_bytes(b)
                } else {
                    f64::from_le_bytes(b)
                }
            })
            .collect()
    };
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    // Fortran order stores the transpose: read it with the axes reversed, then reverse them back.
    let x = if header.fortran_order {
        let reversed: Vec<i64> = dims.iter().rev().copied().collect();
        let axes: Vec<i64> = (0..dims.len() as i64).rev().collect();
        Tensor::from_slice(&values).reshape(reversed).permute(axes).contiguous()
    } else {
        Tensor::from_slice(&values).reshape(dims)
    };
    let flat = x.flatten(0, -1);
    let finite = flat.isfinite();
    if finite.all().int64_value(&[]) == 0 {
        let i = finite.logical_not().nonzero().int64_value(&[0, 0]);
        let row_len: i64 = shape[1..].iter().product::<usize>() as i64;
        return Err(format!(
            "value {} at row {}, element {} is not finite",
            flat.double_value(&[i]),
            i / row_len,
            i % row_len
        ));
    }
    Ok(x)
}

/// What a `.npy` header says about the array after it.
struct Header {
    shape: Vec<usize>,
    /// 4 (float32) or 8 (float64).
    item_size: usize,
    big_endian: bool,
    fortran_order: bool,
    /// Offset of the first value.
    data_start: usize,
}

impl Header {
    /// Parses the magic string, the version, the header length and the header's Python dict,
    /// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }`.
    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        const MAGIC: &[u8] = b"\x93NUMPY";
        if !bytes.starts_with(MAGIC) {
            return Err("not a float32/float64 .npy array (no \\x93NUMPY magic string)".into());
        }
        let (len_bytes, start) = match bytes.get(6) {
            Some(1) => (2, 10),
            Some(2 | 3) => (4, 12),
            Some(v) => return Err(format!("unsupported .npy format version {v}")),
            None => return Err("truncated: the file ends inside the .npy magic string".into()),
        };
        if bytes.len() < start {
            return Err("truncated: the file ends inside the .npy header length".into());
        }
        let len = bytes[8..8 + len_bytes].iter().rev().fold(0usize, |acc, &b| (acc << 8) | b as usize);
        let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            format!("truncated: the header claims {len} bytes, the file holds {}", bytes.len() - start)
        })?;
        let text = std::str::from_utf8(&bytes[start..end]).map_err(|_| "the .npy header is not text".to_string())?;
        let mut dict = DictParser { rest: text.trim() };
        let (mut descr, mut fortran_order, mut shape) = (None, None, None);
        dict.expect('{')?;
        while !dict.eat('}') {
            let key = dict.string()?;
            dict.expect(':')?;
            match key {
                "descr" => descr = Some(dict.string()?),
                "fortran_order" => fortran_order = Some(dict.boolean()?),
                "shape" => shape = Some(dict.tuple()?),
                other => return Err(format!("unknown key '{other}' in the .npy header")),
            }
            if !dict.eat(',') {
                dict.expect('}')?;
                break;
            }
        }
        let missing = |key: &str| format!("the .npy header has no '{key}'");
        let descr = descr.ok_or_else(|| missing("descr"))?;
        let (big_endian, item_size) = match descr {
            "<f4" | "=f4" => (false, 4),
            "<f8" | "=f8" => (false, 8),
            ">f4" => (true, 4),
            ">f8" => (true, 8),
            other => return Err(format!("not a float32/float64 .npy array: dtype '{other}', expected '<f4' or '<f8'")),
        };
        Ok(Header {
            shape: shape.ok_or_else(|| missing("shape"))?,
            item_size,
            big_endian,
            fortran_order: fortran_order.ok_or_else(|| missing("fortran_order"))?,
            data_start: end,
        })
    }
}

/// The few Python literals a `.npy` header holds: quoted strings, `True`/`False`, tuples of
/// integers.
struct DictParser<'a> {
    rest: &'a str,
}

impl<'a> DictParser<'a> {
    fn eat(&mut self, c: char) -> bool {
        self.rest = self.rest.trim_start();
        match self.rest.strip_prefix(c) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("malformed .npy header: expected '{c}' at '{}'", self.preview()))
        }
    }

    fn preview(&self) -> String {
        self.rest.chars().take(20).collect()
    }

    fn string(&mut self) -> std::result::Result<&'a str, String> {
        self.rest = self.rest.trim_start();
        let quote = self.rest.chars().next().filter(|&c| c == '\'' || c == '"');
        let Some(quote) = quote else {
            return Err(format!("malformed .npy header: expected a quoted string at '{}'", self.preview()));
        };
        let body = &self.rest[1..];
        let close = body.find(quote).ok_or_else(|| "malformed .npy header: unclosed string".to_string())?;
        self.rest = &body[close + 1..];
        Ok(&body[..close])
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.rest = self.rest.trim_start();
        for (word, value) in [("True", true), ("False", false)] {
            if let Some(rest) = self.rest.strip_prefix(word) {
                self.rest = rest;
                return Ok(value);
            }
        }
        Err(format!("malformed .npy header: expected True or False at '{}'", self.preview()))
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect('(')?;
        let mut dims = Vec::new();
        while !self.eat(')') {
            self.rest = self.rest.trim_start();
            let digits = self.rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(self.rest.len());
            let dim = self.rest[..digits]
                .parse::<usize>()
                .map_err(|_| format!("malformed .npy header: expected a size at '{}'", self.preview()))?;
            self.rest = &self.rest[digits..];
            dims.push(dim);
            if !self.eat(',') {
                self.expect(')')?;
                break;
            }
        }
        Ok(dims)
    }
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
