//! The flat optimiser: variables moved into one buffer keep their values and their owners
//! (a VarStore) see every update; autograd adds their gradients into the flat gradient; and
//! Adam and the EMA over the buffers are the per-tensor algorithms.
mod common;

use cdm::optim::{ema_update, grad_norm, Adam, FlatVars, ADAM_BETAS, ADAM_EPS};
use common::max_abs_diff;
use tch::{nn, Device, Kind, Tensor};

/// Two variables of different shapes in a VarStore, sorted by name as the trainer does.
fn store() -> (nn::VarStore, Vec<(String, Tensor)>) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _ = vs.root().var_copy("a", &Tensor::from_slice(&[0.5, -1.0, 2.0, 0.25, -0.75, 1.5]).reshape([3, 2]));
    let _ = vs.root().var_copy("b", &Tensor::from_slice(&[0.1, -0.2]));
    vs.double();
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|x, y| x.0.cmp(&y.0));
    (vs, vars)
}

/// A loss with a different gradient at every step: Σ (x·a + b)³ over a fixed input x.
fn loss(a: &Tensor, b: &Tensor, step: i64) -> Tensor {
    let x = Tensor::from_slice(&[1.0, -0.5, 0.3, 0.2, 0.1, -0.4]).reshape([2, 3]) * (1.0 + step as f64);
    (x.matmul(a) + b).pow_tensor_scalar(3).sum(Kind::Double)
}

#[test]
fn adam_over_the_flat_buffer_is_adam_per_tensor() {
    let (vs, vars) = store();
    // The reference: separate copies, updated by the formulas of Algorithm 1.
    let mut reference: Vec<Tensor> = vars.iter().map(|(_, v)| v.detach().copy()).collect();
    let mut moments: Vec<(Tensor, Tensor)> = reference.iter().map(|p| (p.zeros_like(), p.zeros_like())).collect();
    let mut params = FlatVars::new(vars).unwrap().track_grads();
    let mut adam = Adam::new(&params);
    let (b1, b2) = ADAM_BETAS;
    let (lr, scale) = (0.01, 0.7);
    for step in 0..4 {
        params.zero_grads();
        let named = vs.variables();
        loss(&named["a"], &named["b"], step).backward();
        let refs: Vec<Tensor> = reference.iter().map(|p| p.detach().set_requires_grad(true)).collect();
        let grads = Tensor::run_backward(&[loss(&refs[0], &refs[1], step)], &[&refs[0], &refs[1]], false, false);
        let norm = grads.iter().map(|g| g.square().sum(Kind::Double)).fold(Tensor::from(0.0), |s, x| s + x).sqrt();
        assert!(max_abs_diff(&grad_norm(&params).unwrap(), &norm) < 1e-12, "step {step}: gradient norm");

        adam.update(&params, lr, step as u64 + 1, Some(&Tensor::from(scale))).unwrap();
        let k = step + 1;
        for ((p, (m, v)), g) in reference.iter_mut().zip(&mut moments).zip(&grads) {
            let g = g * scale;
            *m = &*m * b1 + &g * (1.0 - b1);
            *v = &*v * b2 + g.square() * (1.0 - b2);
            let m_hat = &*m / (1.0 - b1.powi(k as i32));
            let v_hat = &*v / (1.0 - b2.powi(k as i32));
            *p = &*p - m_hat / (v_hat.sqrt() + ADAM_EPS) * lr;
        }
        let named = vs.variables();
        for (name, expected) in ["a", "b"].iter().zip(&reference) {
            let err = max_abs_diff(&named[*name], expected);
            assert!(err < 1e-14, "step {step}: '{name}' off by {err}");
        }
    }
    // The VarStore's variables are views of the buffer.
    assert_eq!(params.names(), ["a", "b"]);
    assert_eq!(max_abs_diff(&params.slice(params.values(), 1), &vs.variables()["b"]), 0.0);
    // Each slice starts on a 64-byte boundary, as a tensor of its own would.
    assert_eq!(params.slice(params.values(), 1).data_ptr() as usize % 64, 0);
}

#[test]
fn the_flat_gradient_is_autograds_and_accumulates_until_zeroed() {
    let (vs, vars) = store();
    let mut params = FlatVars::new(vars).unwrap().track_grads();
    assert_eq!(params.grads().unwrap().abs().sum(Kind::Double).double_value(&[]), 0.0);
    let named = vs.variables();
    for _ in 0..2 {
        loss(&named["a"], &named["b"], 0).backward();
    }
    let (a, b) = (named["a"].detach().set_requires_grad(true), named["b"].detach().set_requires_grad(true));
    let expected = Tensor::run_backward(&[loss(&a, &b, 0) * 2.0], &[&a, &b], false, false);
    let grads = params.grads().unwrap().shallow_clone();
    for (i, g) in expected.iter().enumerate() {
        assert!(max_abs_diff(&params.slice(&grads, i), g) < 1e-12, "variable {i}");
        // What the variable itself reports is the same memory.
        assert_eq!(named[["a", "b"][i]].grad().data_ptr(), params.slice(&grads, i).data_ptr());
    }
    params.zero_grads();
    assert_eq!(named["a"].grad().abs().sum(Kind::Double).double_value(&[]), 0.0);
}

#[test]
fn the_ema_moves_every_variable_towards_the_weights() {
    let (_vs, vars) = store();
    let (_ema_vs, ema_vars) = store();
    let params = FlatVars::new(vars).unwrap();
    let ema = FlatVars::new(ema_vars).unwrap();
    let _ = params.values().shallow_clone().fill_(1.0);
    let before = ema.values().copy();
    ema_update(&ema, &params, 0.9);
    let expected = &before * 0.9 + 0.1;
    assert!(max_abs_diff(ema.values(), &expected) < 1e-15);
}

#[test]
fn variables_of_mixed_kinds_are_refused() {
    let a = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
    let b = Tensor::from_slice(&[1.0f64]).set_requires_grad(true);
    assert!(FlatVars::new(vec![("a".into(), a), ("b".into(), b)]).is_err());
    assert!(FlatVars::new(vec![]).is_err());
}

#[test]
fn a_first_non_finite_variable_is_named() {
    let (_vs, vars) = store();
    let params = FlatVars::new(vars).unwrap();
    assert_eq!(params.first_non_finite(), None);
    let _ = params.slice(params.values(), 1).fill_(f64::NAN);
    assert_eq!(params.first_non_finite(), Some("b"));
}
