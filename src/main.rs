fn main(){ let t = tch::Tensor::from_slice(&[1.0f64,2.0]); println!("{} cuda={}", t.sum(tch::Kind::Double).double_value(&[]), tch::Cuda::is_available()); }
