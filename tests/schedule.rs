//! ᾱ_t pinned against tests/reference/schedule.py (plain Python floats, f64).
mod common;

use cdm::schedule::{Schedule, ScheduleConfig, ScheduleKind};
use clap::ValueEnum;
use common::assert_close;
use tch::{Kind, Tensor};

fn alpha_bar(kind: ScheduleKind, timesteps: usize, t: usize) -> f64 {
    Schedule::new(ScheduleConfig::new(kind, timesteps)).unwrap().alpha_bar(t)
}

#[test]
fn pinned_values() {
    // tests/reference/schedule.py: (kind, T, [ᾱ_1, ᾱ_{T/2}, ᾱ_T])
    let cases = [
        (ScheduleKind::Linear, 1000, [0.9999, 0.07858724288177824, 4.0358297653756754e-05]),
        (ScheduleKind::Linear, 10, [0.99, 0.014377689695473265, 1.4377689695473327e-17]),
        (ScheduleKind::Cosine, 1000, [0.999958715775178, 0.4938435904406382, 2.4287669070348567e-09]),
        (ScheduleKind::Cosine, 10, [0.972092737113969, 0.4938435904406378, 2.4091724140085884e-05]),
        (ScheduleKind::Tdr, 1000, [0.999999001997004, 0.7504992509987515, 0.001997003995005908]),
        (ScheduleKind::Tdr, 10, [0.9917355371900827, 0.7933884297520661, 0.17355371900826455]),
    ];
    for (kind, t_max, expected) in cases {
        for (t, want) in [1, t_max / 2, t_max].into_iter().zip(expected) {
            let got = alpha_bar(kind, t_max, t);
            assert_close(got, want, 1e-12 * want.max(1e-6), &format!("{kind:?} T={t_max} t={t}"));
        }
    }
}

#[test]
fn end_points_and_monotone() {
    for &kind in ScheduleKind::value_variants() {
        let s = Schedule::new(ScheduleConfig::new(kind, 100)).unwrap();
        let ab = s.alpha_bars();
        assert_eq!(ab.len(), 102);
        assert_eq!((ab[0], ab[101]), (1.0, 0.0), "{kind:?}");
        assert!(ab.windows(2).all(|w| w[1] < w[0]), "{kind:?} is not strictly decreasing");
    }
}

#[test]
fn sampling_levels_grid() {
    let s = Schedule::new(ScheduleConfig::default()).unwrap();
    assert_eq!(s.sampling_levels(5).unwrap(), vec![1000, 800, 600, 400, 200, 0]);
    assert_eq!(s.sampling_levels(3).unwrap(), vec![1000, 667, 333, 0]);
    assert!(s.sampling_levels(0).is_err());
    assert!(s.sampling_levels(1001).is_err());
    assert_eq!(s.sampling_levels_from(300, 3).unwrap(), vec![300, 200, 100, 0]);
    assert_eq!(s.sampling_levels_from(5, 5).unwrap(), vec![5, 4, 3, 2, 1, 0]);
    assert!(s.sampling_levels_from(5, 6).is_err());
    assert!(s.sampling_levels_from(0, 1).is_err());
    assert!(s.sampling_levels_from(1001, 10).is_err());
    assert!(Schedule::new(ScheduleConfig { timesteps: 0, ..Default::default() }).is_err());
}

#[test]
fn logsnr_schedule_steps_evenly_in_log_snr() {
    let config =
        ScheduleConfig { logsnr_max: 20.0, logsnr_min: -12.0, ..ScheduleConfig::new(ScheduleKind::LogSnr, 33) };
    let s = Schedule::new(config).unwrap();
    for t in 1..=33 {
        assert_close(s.logsnr(t), 20.0 - (t - 1) as f64, 1e-6, &format!("γ_{t}"));
    }
    // The forward process in f32 keeps the smallest noise std: √(1-ᾱ_1) = √sigmoid(−20) ≈ 4.5e-5.
    let x = Tensor::ones([2, 3], (Kind::Float, tch::Device::Cpu));
    let (a, sigma) = s.coefficients(&Tensor::from_slice(&[1i64, 33]), &x);
    assert_close(sigma.double_value(&[0, 0]), (1.0 / (1.0 + 20f64.exp())).sqrt(), 1e-10, "σ_1");
    assert_close(a.double_value(&[1, 0]), (1.0 / (1.0 + 12f64.exp())).sqrt(), 1e-8, "√ᾱ_T");
    for (lo, hi) in [(1.0, 1.0), (2.0, 1.0), (f64::NEG_INFINITY, 1.0)] {
        let bad = ScheduleConfig { logsnr_max: hi, logsnr_min: lo, ..config };
        assert!(Schedule::new(bad).is_err(), "range [{lo}, {hi}] accepted");
    }
}
