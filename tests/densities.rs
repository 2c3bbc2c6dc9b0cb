//! The built-in densities are what they claim: each exact log-density integrates to one,
//! samples land where the density is, and the mixture's posterior mean matches Monte Carlo.
use cdm::data::{Checkerboard, GaussianMixture, KnownDensity, Rings, UniformCube};
use cdm::rng::Rng;
use tch::{Device, Kind, Tensor};

/// ∫ exp(log_p) over [-h, h]² by the midpoint rule on an n×n grid.
fn integral_2d(log_p: impl Fn(&Tensor) -> Tensor, h: f64, n: i64) -> f64 {
    let cell = 2.0 * h / n as f64;
    let axis = Tensor::arange(n, (Kind::Double, Device::Cpu)) * cell + (cell / 2.0 - h);
    let mesh = Tensor::meshgrid_indexing(&[&axis, &axis], "ij");
    let points = Tensor::stack(&[mesh[0].flatten(0, -1), mesh[1].flatten(0, -1)], 1);
    log_p(&points).exp().sum(Kind::Double).double_value(&[]) * cell * cell
}

#[test]
fn two_d_densities_integrate_to_one() {
    let densities: [(&str, Box<dyn KnownDensity>, f64); 3] = [
        ("gmm2d", Box::new(GaussianMixture::circle_2d()), 1e-6),
        ("rings", Box::new(Rings), 1e-4),
        // The midpoint grid lines up with the squares' edges, so the sum is exact.
        ("checkerboard", Box::new(Checkerboard), 1e-9),
    ];
    for (name, density, tol) in densities {
        let total = integral_2d(|x| density.log_prob(x), 4.0, 800);
        assert!((total - 1.0).abs() < tol, "{name}: integrates to {total}");
    }
}

#[test]
fn noisy_cube_and_mixture_integrate_to_one_at_every_level() {
    let cube = UniformCube { shape: vec![2], width: 1.5 };
    let gmm = GaussianMixture::circle_2d();
    for alpha_bar in [0.999, 0.9, 0.5, 0.01] {
        for (name, density) in [("cube", &cube as &dyn KnownDensity), ("gmm2d", &gmm)] {
            let total = integral_2d(|x| density.log_prob_noisy(x, alpha_bar).unwrap(), 6.0, 1200);
            assert!((total - 1.0).abs() < 1e-4, "{name} at ᾱ = {alpha_bar}: integrates to {total}");
        }
    }
}

#[test]
fn samples_lie_in_the_support() {
    let mut rng = Rng::new(5);
    let cube = UniformCube { shape: vec![3, 4, 4], width: 0.5 };
    let x = cube.sample(100, &mut rng);
    assert_eq!(x.size(), [100, 3, 4, 4]);
    let log_p = cube.log_prob(&x);
    assert!((log_p - 48.0 * 2f64.ln()).abs().max().double_value(&[]) < 1e-9);
    let board = Checkerboard.sample(2000, &mut rng);
    assert!(Checkerboard.log_prob(&board).isfinite().all().int64_value(&[]) == 1, "a sample fell on a light square");
    // Outside the board, or on a light square, the density is zero.
    let outside = Tensor::from_slice(&[2.5, 0.0, 0.5, -0.5]).reshape([2, 2]);
    assert_eq!(Vec::<f64>::try_from(Checkerboard.log_prob(&outside)).unwrap(), vec![f64::NEG_INFINITY; 2]);
}

#[test]
fn mixture_posterior_mean_matches_monte_carlo() {
    // E[x0 | x_t] near a fixed x_t, estimated by averaging x0 over joint samples whose x_t
    // falls in a small ball around it.
    let gmm = GaussianMixture::circle_2d();
    let mut rng = Rng::new(11);
    let alpha_bar: f64 = 0.6;
    let x0 = gmm.sample(400_000, &mut rng);
    let x_t = &x0 * alpha_bar.sqrt() + rng.normal(&[400_000, 2], Kind::Double) * (1.0 - alpha_bar).sqrt();
    let at = Tensor::from_slice(&[0.9, 0.6]).reshape([1, 2]);
    let near = (&x_t - &at).square().sum_dim_intlist(1, false, Kind::Double).lt(0.1f64.powi(2));
    let count = near.sum(Kind::Double).double_value(&[]);
    let mc = x0.index(&[Some(near)]).mean_dim(0, false, Kind::Double);
    let exact = gmm.posterior_mean(&at, alpha_bar).unwrap().squeeze_dim(0);
    let diff = (&mc - &exact).abs().max().double_value(&[]);
    // About 400 samples fall in the ball: the Monte Carlo error is about 0.015 per coordinate.
    assert!(count > 300.0, "only {count} samples near the point");
    assert!(diff < 0.06, "Monte Carlo {mc:?} against exact {exact:?}: off by {diff}");
}
