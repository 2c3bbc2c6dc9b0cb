//! [`evaluate`]: one checkpoint (and optionally a second to compare) measured the way the paper
//! measures it, into a [`Report`] and its folder of per-point `.npy` files and pictures.
use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::report::*;
use super::{
    cdm_noise_classifier, denoising_levels, denoising_mse, exact_noise_classifier, first, level_classifier,
    level_log_densities, logit_profile, mean, nll_bits_per_dim, noise_classifier, ood_levels, sampler_drift,
    samples_mmd, Batches, Estimator, OodScores,
};
use crate::cache::file_stem;
use crate::checkpoint::LoadedModel;
use crate::data::{is_8bit, npy, test_split, Dataset};
use crate::distributed::{ProcessGroup, Shard};
use crate::likelihood::{dequantize, Dequantization};
use crate::loss::{CdlConfig, ZetaPrior};
use crate::metrics::fid::{reference_stats, Inception};
use crate::metrics::{frechet_distance, Typicality};
use crate::model::Model;
use crate::plot::{image_grid, line_chart, matrix_heatmap, Axes, Series};
use crate::rng::Rng;
use crate::sample::{draw, Noise, ParallelOptions, SampleOptions, SamplingStats};
use crate::{Error, Result};

/// What to evaluate, on how much, and how samples are drawn.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The sections to compute (empty: every one that applies to the model).
    pub only: Vec<Metric>,
    /// Data to evaluate on (default: the training data's test split where it has one).
    pub data: Option<String>,
    /// Points for likelihood, denoising, diagnostics and OOD.
    pub n: usize,
    /// Network evaluations per point for a DDM's I-MMSE likelihood (the largest is its NLL).
    pub evaluations: Vec<usize>,
    /// Points for the likelihood-against-evaluations curve and the noise classifier.
    pub nfe_images: usize,
    /// Samples for FID (0: no FID).
    pub fid_samples: usize,
    /// Training images for the FID reference statistics (cached per user).
    pub fid_reference: usize,
    /// How samples are drawn; its seed also seeds every random draw of the evaluation.
    pub sampling: SampleOptions,
    /// Other data to tell apart from the evaluation data (OOD).
    pub ood: Vec<String>,
    /// Bandwidth h of the MMD's Gaussian kernel exp(−|a − b|²/(2h²)).
    pub mmd_bandwidth: f64,
    /// Where the noise classifier's ζ is drawn (default: as the run was trained with CDL, else
    /// logistic), so that runs with and without the term are scored alike.
    pub cdl_zeta: Option<ZetaPrior>,
    /// Points per forward pass.
    pub batch: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            only: Vec::new(),
            data: None,
            n: 2000,
            evaluations: vec![1, 2, 4, 8, 16, 32, 64, 128],
            nfe_images: 200,
            fid_samples: 1000,
            fid_reference: 10_000,
            sampling: SampleOptions::default(),
            ood: Vec::new(),
            mmd_bandwidth: 0.2,
            cdl_zeta: None,
            batch: 1024,
        }
    }
}

/// The random draws of an evaluation besides the samples, each from its own stream of the
/// plan's seed, so that one section's draws never depend on another's.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// The dequantization of held-out and other data for level profiles and the noise classifier.
    Dequantize,
    /// The training points a typical level profile is fitted to.
    OodFit,
    /// The levels and noise of the level classifier's points.
    LevelClassifier,
}

impl Stream {
    /// The seed of this stream for the evaluation seed `seed`.
    pub fn seed(self, seed: u64) -> u64 {
        seed ^ match self {
            Stream::Dequantize => 0x00d,
            Stream::OodFit => 0xf17,
            Stream::LevelClassifier => 0xd1a6,
        }
    }
}

/// Samples drawn for the sampler-drift diagnostic.
const DRIFT_SAMPLES: usize = 32;

/// What every section reads.
struct Context<'a> {
    plan: &'a Plan,
    out: &'a Path,
    models: Vec<(String, &'a LoadedModel)>,
    data: String,
    /// What `data` opened to (its density, where it has one, scores the Bayes noise classifier).
    dataset: Dataset,
    /// Evaluation points [n, ..] (CPU, Double).
    x: Tensor,
    /// 8-bit images (x = k/127.5 − 1): bits/dim get the dequantization treatment.
    eight_bit: bool,
    progress: Option<&'a dyn Fn(u64, u64)>,
    /// The ranks that share the bits/dim and the FID samples; rank 0 does the rest and writes.
    group: Option<&'a ProcessGroup>,
}

impl Context<'_> {
    /// This process writes the files and computes what is not shared (no job, or rank 0).
    fn writes(&self) -> bool {
        self.group.is_none_or(|g| g.rank() == 0)
    }

    /// `f` on this rank's share of `n` points (all of them without a job; whole chunks of the
    /// plan's batch, so that per-chunk draws are those of one process), the shares gathered on
    /// every rank: [n, ..row_shape] in `kind`, on the CPU.
    fn shared(
        &self,
        n: usize,
        row_shape: &[i64],
        kind: Kind,
        f: impl FnOnce(Shard) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let Some(group) = self.group else { return f(Shard::whole(n)) };
        let shard = Shard::chunks(n, self.plan.batch, group.rank(), group.world_size());
        let part = (shard.len > 0).then(|| f(shard)).transpose();
        let whole = Tensor::zeros([&[n as i64][..], row_shape].concat(), (Kind::Double, Device::Cpu));
        Ok(group.gather_rows(shard, part, whole)?.to_kind(kind))
    }

    /// `batches` for the points of `shard`, counted from its start.
    fn for_shard<'b>(batches: Batches<'b>, shard: Shard) -> Batches<'b> {
        Batches { first_row: shard.start, ..batches }
    }
    /// The model under evaluation (the first; the second, if any, is compared with it).
    fn model(&self) -> &LoadedModel {
        self.models[0].1
    }

    fn batches(&self, model: &LoadedModel) -> Batches<'_> {
        Batches { progress: self.progress, ..Batches::new(self.plan.batch, model.options()) }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

/// Evaluates `model` (and `compare`, trained on the same data) as `plan` says, writing the
/// per-point values and pictures into `out` (which must exist); `progress` follows each pass
/// over the points. The report itself is returned, for [`Report::write`].
pub fn evaluate(
    model: &LoadedModel,
    compare: Option<&LoadedModel>,
    plan: &Plan,
    out: &Path,
    progress: Option<&dyn Fn(u64, u64)>,
) -> Result<Report> {
    evaluate_in_job(model, compare, plan, out, progress, None)
}

/// [`evaluate`] as one rank of `group`: the ranks share the bits/dim and the FID samples (the
/// same figures as one process), rank 0 computes the other sections and writes every file;
/// the other ranks' reports hold only the header.
pub fn evaluate_in_job(
    model: &LoadedModel,
    compare: Option<&LoadedModel>,
    plan: &Plan,
    out: &Path,
    progress: Option<&dyn Fn(u64, u64)>,
    group: Option<&ProcessGroup>,
) -> Result<Report> {
    if let Some(other) = compare {
        if other.config.model.data_shape != model.config.model.data_shape {
            return Err(Error::Config(format!("{}: its data shape differs from {}'s", other.name(), model.name())));
        }
    }
    let data = plan.data.clone().or_else(|| test_split(&model.config.data)).unwrap_or(model.config.data.clone());
    let dataset = Dataset::open(&data).map_err(|e| e.within(format!("data {data}")))?;
    let x = dataset.first_points(plan.n, plan.sampling.seed);
    model.model.check_input(&x).map_err(|e| e.within(format!("data {data}")))?;
    let eight_bit = is_8bit(&x);
    let mut models = vec![(model.name(), model)];
    models.extend(compare.map(|c| (c.name(), c)));
    let ctx = Context { plan, out, models, data, dataset, x, eight_bit, progress, group };

    let is_cdm = matches!(model.model, Model::Cdm(_));
    let has_ddm = !is_cdm || compare.is_some_and(|m| matches!(m.model, Model::Ddm(_)));
    let applies = |m: Metric| match m {
        Metric::Diagnostics | Metric::Ood => is_cdm,
        Metric::LikelihoodNfe => has_ddm,
        Metric::Fid => plan.fid_samples > 0 && ctx.x.dim() == 4,
        Metric::Mmd => ctx.x.dim() == 2,
        Metric::Cdl => !plan.only.is_empty() || model.config.train.cdl.is_some(),
        Metric::Nll | Metric::Denoising => true,
    };
    if let Some(m) = plan.only.iter().find(|m| !applies(**m)) {
        return Err(Error::Config(format!("{m:?} does not apply to this model (diagnostics and OOD need a CDM, likelihood-nfe a DDM, FID image data and FID samples, MMD vector data)")));
    }
    if plan.only.contains(&Metric::Ood) && plan.ood.is_empty() {
        return Err(Error::Config("OOD detection needs other data to tell apart from the evaluation data".into()));
    }
    // Rank 0 computes every section; the others only help with the shared ones.
    let shared = |m: Metric| matches!(m, Metric::Nll | Metric::Fid);
    let wanted =
        |m: Metric| (plan.only.is_empty() || plan.only.contains(&m)) && applies(m) && (ctx.writes() || shared(m));
    let section = |m: Metric| {
        tracing::info!("eval: {m:?}");
        move |e: Error| e.within(format!("eval {m:?}"))
    };
    let compared = compare.map(|c| Compared { ckpt: c.name(), step: c.step });
    let header = Header {
        ckpt: model.dir.display().to_string(),
        step: model.step,
        model: format!("{:?}", model.config.model.kind).to_lowercase(),
        data: ctx.data.clone(),
        trained_on: model.config.data.clone(),
        n: ctx.x.size()[0] as usize,
        weights: if model.ema { "ema" } else { "raw" }.into(),
        compare: compared,
    };
    let mut report = Report { header, ..Report::default() };
    if wanted(Metric::Nll) {
        report.nll = Some(nll(&ctx).map_err(section(Metric::Nll))?);
    }
    if wanted(Metric::LikelihoodNfe) {
        report.likelihood_vs_evaluations = Some(likelihood_nfe(&ctx).map_err(section(Metric::LikelihoodNfe))?);
    }
    if wanted(Metric::Denoising) {
        report.denoising_mse = Some(denoising(&ctx).map_err(section(Metric::Denoising))?);
    }
    if wanted(Metric::Diagnostics) {
        report.classifier = Some(diagnostics(&ctx).map_err(section(Metric::Diagnostics))?);
    }
    if wanted(Metric::Ood) && !plan.ood.is_empty() {
        report.ood = Some(ood(&ctx).map_err(section(Metric::Ood))?);
    }
    if wanted(Metric::Fid) {
        report.fid = Some(fid(&ctx).map_err(section(Metric::Fid))?);
    }
    if wanted(Metric::Mmd) {
        report.mmd = Some(mmd(&ctx).map_err(section(Metric::Mmd))?);
    }
    if wanted(Metric::Cdl) {
        report.cdl = Some(cdl(&ctx).map_err(section(Metric::Cdl))?);
    }
    Ok(report)
}

/// Draws a chart at `path`. A host without fonts (a GPU host, say) cannot draw its labels, and
/// a report's numbers are not to be lost for a picture, so a chart that fails is a warning.
fn chart(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) {
    if let Err(e) = draw(path) {
        tracing::warn!("{} not drawn: {e}", path.display());
    }
}

fn nll(ctx: &Context) -> Result<Vec<NllRow>> {
    let (plan, seed) = (ctx.plan, ctx.plan.sampling.seed);
    let conventions: Vec<Option<Dequantization>> =
        if ctx.eight_bit { vec![Some(Dequantization::Uniform), Some(Dequantization::Paper)] } else { vec![None] };
    let mut rows = Vec::new();
    for (name, model) in &ctx.models {
        let how = Estimator::for_nll(&model.model, plan.evaluations.iter().copied().max().unwrap_or(128));
        let x = match how {
            Estimator::OnePass(_) => ctx.x.shallow_clone(),
            Estimator::Immse(_) => first(&ctx.x, plan.nfe_images),
        };
        for &convention in &conventions {
            let bpd = ctx.shared(x.size()[0] as usize, &[], Kind::Double, |shard| {
                let batches = Context::for_shard(ctx.batches(model), shard);
                nll_bits_per_dim(&model.model, &shard.rows(&x), how, convention, &batches, seed)
            })?;
            let (label, suffix) = match convention {
                Some(Dequantization::Uniform) => ("uniform dequantization, +7 (a bound)", "_uniform"),
                Some(Dequantization::Paper) => ("paper: no dequantization, +7 (not a bound)", "_paper"),
                None => ("continuous density", ""),
            };
            let file = format!("nll_bpd_{name}{suffix}.npy");
            if ctx.writes() {
                npy::write_npy(&ctx.file(&file), &bpd)?;
            }
            rows.push(NllRow {
                model: name.clone(),
                estimator: how.describe(&model.model),
                convention: label.into(),
                n: x.size()[0] as usize,
                bits_per_dim: mean(&bpd),
                per_point: file,
            });
        }
    }
    Ok(rows)
}

fn likelihood_nfe(ctx: &Context) -> Result<LikelihoodCurve> {
    let x = first(&ctx.x, ctx.plan.nfe_images);
    let convention = ctx.eight_bit.then_some(Dequantization::Uniform);
    let n = x.size()[0] as f64;
    let (mut by_nfe, mut by_time, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for (name, model) in &ctx.models {
        let (mut nfe_points, mut time_points) = (Vec::new(), Vec::new());
        for (k, how) in Estimator::of_log_p1(&model.model, &ctx.plan.evaluations) {
            let start = Instant::now();
            let seed = ctx.plan.sampling.seed;
            let bpd = mean(&nll_bits_per_dim(&model.model, &x, how, convention, &ctx.batches(model), seed)?);
            let ms = start.elapsed().as_secs_f64() * 1000.0 / n;
            rows.push(LikelihoodPoint { model: name.clone(), evaluations: k, bits_per_dim: bpd, ms_per_point: ms });
            nfe_points.push((k as f64, bpd));
            time_points.push((ms / 1000.0, bpd));
        }
        let kind = if matches!(model.model, Model::Cdm(_)) { "CDM, one pass" } else { "DDM, I-MMSE" };
        let label = format!("{name} ({kind})");
        let markers_only = nfe_points.len() == 1;
        by_nfe.push(Series { label: label.clone(), points: nfe_points, markers_only });
        by_time.push(Series { label, points: time_points, markers_only });
    }
    let title = "-log p_1 against network evaluations";
    let axes = Axes { title, x: "evaluations per point", y: "bits / dim", log_x: true, log_y: false };
    chart(&ctx.file("likelihood_vs_nfe.png"), |path| line_chart(path, &axes, &by_nfe));
    let axes = Axes { title: "-log p_1 against time", x: "seconds per point", ..axes };
    chart(&ctx.file("likelihood_vs_seconds.png"), |path| line_chart(path, &axes, &by_time));
    let alpha_bar = ctx.model().model.schedule().alpha_bar(1);
    Ok(LikelihoodCurve { alpha_bar, points: x.size()[0] as usize, eight_bit: ctx.eight_bit, rows })
}

fn denoising(ctx: &Context) -> Result<Denoising> {
    let schedule = ctx.model().model.schedule();
    let levels = denoising_levels(schedule.timesteps());
    let x = &ctx.x;
    let eps =
        Noise::new(ctx.plan.sampling.seed, 0, x.size()[0] as usize).normal(&x.size()[1..], Kind::Double, Device::Cpu);
    if ctx.models.iter().any(|(_, m)| m.model.schedule().alpha_bars() != schedule.alpha_bars()) {
        return Err(Error::Config("the two models use different noise schedules".into()));
    }
    let mut curves: Vec<Series> =
        ctx.models.iter().map(|(n, _)| Series { label: n.clone(), points: vec![], markers_only: false }).collect();
    let mut rows = Vec::new();
    for &t in &levels {
        let mut mse = Vec::new();
        for ((_, model), curve) in ctx.models.iter().zip(&mut curves) {
            let value = denoising_mse(&model.model, x, t, &eps, &ctx.batches(model))?;
            curve.points.push((t as f64, value));
            mse.push(value);
        }
        rows.push(DenoisingRow { level: t, alpha_bar: schedule.alpha_bar(t), mse });
    }
    let axes = Axes { title: "Denoising MSE per dimension", x: "noise level t", y: "MSE", log_x: false, log_y: true };
    chart(&ctx.file("denoising_mse.png"), |path| line_chart(path, &axes, &curves));
    let models = ctx.models.iter().map(|(n, _)| n.clone()).collect();
    Ok(Denoising { points: x.size()[0] as usize, models, rows })
}

fn diagnostics(ctx: &Context) -> Result<Diagnostics> {
    let model = ctx.model();
    let schedule = model.model.schedule();
    let classifier = model.model.classifier()?;
    let classes = schedule.num_classes();
    let mut rng = Rng::new(Stream::LevelClassifier.seed(ctx.plan.sampling.seed));
    let metrics = level_classifier(classifier, &ctx.x, &mut rng, &ctx.batches(model))?;
    let normalised: Vec<Vec<f64>> = metrics
        .confusion
        .iter()
        .map(|row| {
            let total = row.iter().sum::<u64>().max(1) as f64;
            row.iter().map(|&c| c as f64 / total).collect()
        })
        .collect();
    let bins = metrics.confusion_bins;
    let title = format!("Confusion over levels ({bins} bins of {:.0} levels)", classes as f64 / bins as f64);
    chart(&ctx.file("confusion.png"), |path| {
        matrix_heatmap(path, &title, "true level bin", "predicted level bin", &normalised)
    });

    // Logit profile (Fig. 6): mean log-softmax over all levels, for points at a few true levels.
    let t_max = schedule.timesteps();
    let probe = ctx.x.narrow(0, 0, 64.min(metrics.n as i64));
    let mut profiles = Vec::new();
    for f in [0.1, 0.3, 0.5, 0.7, 0.9] {
        let t = ((f * t_max as f64).round() as usize).max(1);
        let profile = logit_profile(classifier, &probe, t, &mut rng, &ctx.batches(model))?;
        profiles.push(Series {
            label: format!("true level {t}"),
            points: profile.iter().enumerate().map(|(k, &v)| (k as f64, v.max(-30.0))).collect(),
            markers_only: false,
        });
    }
    let axes =
        Axes { title: "Mean log-softmax over levels", x: "level k", y: "log p(k | x_t)", log_x: false, log_y: false };
    chart(&ctx.file("logit_profile.png"), |path| line_chart(path, &axes, &profiles));
    let sampler_drift = drift(ctx, &mut rng)?;
    Ok(Diagnostics { metrics, classes, sampler_drift })
}

/// [`sampler_drift`] for the plan's sampler, as rows and a plot.
fn drift(ctx: &Context, rng: &mut Rng) -> Result<Drift> {
    let (model, opts) = (ctx.model(), &ctx.plan.sampling);
    let n = DRIFT_SAMPLES.min(ctx.x.size()[0] as usize);
    let rows = sampler_drift(&model.model, &ctx.x, opts, n, rng, &ctx.batches(model))?;
    let on_samples: Vec<(f64, f64)> = rows.iter().map(|r| (r.level as f64, r.sampler_states)).collect();
    let on_real: Vec<(f64, f64)> = rows.iter().map(|r| (r.level as f64, r.real_points)).collect();
    let scheduled = on_real.iter().map(|&(t, _)| (t, t)).collect();
    let sampler = format!("{:?}", opts.sampler).to_lowercase();
    let series = [
        Series { label: "the sampler's level".into(), points: scheduled, markers_only: false },
        Series { label: format!("classifier on {sampler} states"), points: on_samples, markers_only: false },
        Series { label: "classifier on real points at that level".into(), points: on_real, markers_only: false },
    ];
    let axes = Axes {
        title: "Sampler drift",
        x: "level the sampler is at",
        y: "level the classifier reads (mean argmax)",
        log_x: false,
        log_y: false,
    };
    chart(&ctx.file("sampler_drift.png"), |path| line_chart(path, &axes, &series));
    Ok(Drift { samples: n, sampler: format!("{sampler} with {} steps", opts.steps), rows })
}

/// log p_t(x)/D at `levels` for every point ([N, L]), uniformly dequantized 8-bit images.
fn profiles(ctx: &Context, x: &Tensor, levels: &[usize]) -> Result<Tensor> {
    let model = ctx.model();
    let dequantize_seed = ctx.eight_bit.then_some(Stream::Dequantize.seed(ctx.plan.sampling.seed));
    level_log_densities(model.model.classifier()?, x, levels, dequantize_seed, &ctx.batches(model))
}

fn ood(ctx: &Context) -> Result<Ood> {
    let model = ctx.model();
    let seed = ctx.plan.sampling.seed;
    let levels = ood_levels(model.model.schedule().timesteps());
    let n = ctx.x.size()[0] as usize;
    // The typical profile is fitted on training points, never on the test points scored.
    let train = Dataset::open(&model.config.data)?;
    let fitted = profiles(ctx, &train.first_points(n, Stream::OodFit.seed(seed)), &levels)?;
    npy::write_npy(&ctx.file("ood_profile_train.npy"), &fitted)?;
    let typicality = Typicality::fit(&fitted)?;
    let inside = profiles(ctx, &ctx.x, &levels)?;
    npy::write_npy(&ctx.file("ood_profile_data.npy"), &inside)?;
    let (mut rows, mut by_level) = (Vec::new(), Vec::new());
    for spec in &ctx.plan.ood {
        let named = |e: Error| e.within(format!("other data {spec}"));
        let other = Dataset::open(spec).map_err(named)?;
        let y = other.first_points(n, Stream::Dequantize.seed(seed));
        model.model.check_input(&y).map_err(named)?;
        let outside = profiles(ctx, &y, &levels)?;
        npy::write_npy(&ctx.file(&format!("ood_profile_{}.npy", file_stem(spec))), &outside)?;
        let scores = OodScores::of(&typicality, &inside, &outside)?;
        let per_level: Vec<(f64, f64)> = levels.iter().map(|&t| t as f64).zip(scores.by_level).collect();
        by_level.push(Series { label: spec.clone(), points: per_level.clone(), markers_only: false });
        rows.push(OodRow {
            other: spec.clone(),
            n: y.size()[0] as usize,
            auroc_likelihood: scores.likelihood,
            auroc_typicality_sum_squares: scores.typicality_sum_squares,
            auroc_typicality_max_abs: scores.typicality_max_abs,
            auroc_log_p_t_by_level: per_level,
        });
    }
    let axes =
        Axes { title: "AUROC of log p_t(x) at each level", x: "level t", y: "AUROC", log_x: false, log_y: false };
    chart(&ctx.file("ood_auroc_by_level.png"), |path| line_chart(path, &axes, &by_level));
    Ok(Ood { points: n, levels, rows })
}

/// The FID of the plan's samples, drawn in shares by the ranks of a job; rank 0 alone scores
/// them (the other ranks' figure is NaN).
fn fid(ctx: &Context) -> Result<Fid> {
    let (plan, model) = (ctx.plan, ctx.model());
    let start = Instant::now();
    let mut cost = SamplingStats::default();
    let samples = ctx.shared(plan.fid_samples, model.model.data_shape(), model.options().0, |shard| {
        let drawn = draw(&model.model, shard.len, &plan.sampling, &Context::for_shard(ctx.batches(model), shard))?;
        cost = drawn.stats;
        Ok(drawn.x)
    })?;
    if let Some(group) = ctx.group {
        // The cost of every rank's share: the counts summed (the largest call is this rank's).
        let counts = Tensor::from_slice(&[cost.batches, cost.iterations, cost.evaluations].map(|c| c as f64));
        group.all_reduce_sum(&counts)?;
        let [batches, iterations, evaluations] = [0, 1, 2].map(|i| counts.double_value(&[i]) as usize);
        cost = SamplingStats { batches, iterations, evaluations, ..cost };
    }
    let sampling_seconds = start.elapsed().as_secs_f64();
    cost.seconds = sampling_seconds;
    let sampler = plan.sampling.describe(model.config.model.backbone.num_labels());
    let reference_data = model.config.data.clone();
    let mut fid = Fid {
        fid: f64::NAN,
        samples: plan.fid_samples,
        sampler,
        reference_images: 0,
        reference_data,
        sampling_seconds,
        sampling_cost: cost,
    };
    if ctx.writes() {
        let inception = Inception::load(model.vs.device())?;
        tracing::info!(
            "FID reference statistics of {} images of {} (cached per user)",
            plan.fid_reference,
            fid.reference_data
        );
        let reference = reference_stats(&inception, &model.config.data, plan.fid_reference)?;
        image_grid(&ctx.file("fid_samples.png"), &first(&samples, 100), 10)?;
        fid.fid = frechet_distance(&reference, &inception.stats(&samples, 50)?)?;
        fid.reference_images = reference.n as usize;
    }
    Ok(fid)
}

/// MMD² of each model's samples (as many as held-out points) against the held-out points; with
/// a parallel window of every step, also after each iteration (the CDL paper's measure:
/// iterations to a given MMD²), plotted.
fn mmd(ctx: &Context) -> Result<Mmd> {
    let (plan, n) = (ctx.plan, ctx.x.size()[0] as usize);
    let s = &plan.sampling;
    let traced = |p: &ParallelOptions| ParallelOptions { trace: p.window >= s.steps, ..*p };
    let sampling = SampleOptions { parallel: s.parallel.as_ref().map(traced), ..s.clone() };
    let per_iteration = sampling.parallel.is_some_and(|p| p.trace);
    let (mut rows, mut curves) = (Vec::new(), Vec::new());
    for (name, model) in &ctx.models {
        let got = samples_mmd(&model.model, &ctx.x, &sampling, plan.mmd_bandwidth, &ctx.batches(model))?;
        let points = got.per_iteration.iter().enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect();
        curves.push(Series { label: name.clone(), points, markers_only: false });
        rows.push(MmdRow {
            model: name.clone(),
            mmd2: got.mmd2,
            sampling_cost: got.cost,
            mmd2_per_iteration: got.per_iteration,
        });
    }
    if per_iteration {
        let axes =
            Axes {
                title: "MMD² after each parallel iteration", x: "iteration", y: "MMD²", log_x: false, log_y: true
            };
        chart(&ctx.file("mmd_iterations.png"), |path| line_chart(path, &axes, &curves));
    }
    let sampler = s.describe(ctx.model().config.model.backbone.num_labels());
    Ok(Mmd { bandwidth: plan.mmd_bandwidth, points: n, sampler, models: rows, per_iteration })
}

/// The held-out points as the run was trained on them (uniformly dequantized when it was), the
/// run's ζ prior (the default one otherwise) and the largest evaluation budget as draws per
/// log-density.
fn cdl(ctx: &Context) -> Result<NoiseClassifier> {
    let (model, seed) = (ctx.model(), ctx.plan.sampling.seed);
    let x = first(&ctx.x, ctx.plan.nfe_images);
    let dequantized = model.config.train.dequantize && ctx.eight_bit;
    let x = match dequantized {
        true => dequantize(&x, Dequantization::Uniform, &mut Rng::new(Stream::Dequantize.seed(seed))),
        false => x,
    };
    let draws = ctx.plan.evaluations.iter().copied().max().unwrap_or(128);
    let run_cdl = model.config.train.cdl.unwrap_or_default();
    let cdl = CdlConfig { draws, zeta: ctx.plan.cdl_zeta.unwrap_or(run_cdl.zeta), ..run_cdl };
    let batches = ctx.batches(model);
    let (score, how) = match &model.model {
        Model::Cdm(classifier) => (
            cdm_noise_classifier(classifier, &x, &cdl, &batches, seed)?,
            "in one forward pass (the CDM's level densities)".to_string(),
        ),
        Model::Ddm(_) => {
            (noise_classifier(&model.model, &x, &cdl, &batches, seed)?, format!("with {draws} draws per log-density"))
        }
    };
    // The Bayes classifier on the same points, where the data's density is known after noise too.
    let trained = model.model.schedule().logsnr_proposal();
    let exact = match ctx.dataset.density() {
        Some(density) if density.log_prob_noisy(&first(&x, 1), 0.5).is_some() => {
            Some(exact_noise_classifier(density, &trained, &x, &cdl, &batches, seed)?)
        }
        _ => None,
    };
    Ok(NoiseClassifier { zeta: cdl.zeta, draws, dequantized, how, score, exact })
}
