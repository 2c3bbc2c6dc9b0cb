//! `cdm eval`: one checkpoint measured the way the paper measures it, written as a report
//! folder (report.json, report.md, PNG plots, per-image values as .npy). `--only` runs any one
//! metric on its own; `--compare` adds a second run on the same data (a DDM against a CDM).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use cdm::cache::file_stem;
use cdm::checkpoint::write_atomic;
use cdm::data::{is_8bit, npy, test_split, Dataset, DATA_SPECS};
use cdm::eval::classifier::level_classifier;
use cdm::eval::{
    cdm_noise_classifier, denoising_levels, denoising_mse, exact_noise_classifier, first, level_log_densities,
    logit_profile, nll_bits_per_dim, noise_classifier, ood_levels, sampler_drift, samples_mmd, Batches, Estimator,
    OodScores,
};
use cdm::likelihood::{dequantize, Dequantization};
use cdm::loss::{CdlConfig, ZetaPrior};
use cdm::metrics::fid::{reference_stats, Inception};
use cdm::metrics::{frechet_distance, Typicality};
use cdm::model::Model;
use cdm::plot::{image_grid, line_chart, matrix_heatmap, Axes, Series};
use cdm::rng::Rng;
use cdm::run_lock::RunLock;
use cdm::sample::{Noise, SampleOptions};
use cdm::train::LoadedModel;

use super::check_count;
use super::infer::{draw_samples, with_progress, CkptArgs};

/// The parts of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Bits/dim: one pass for a CDM (both 8-bit conventions), I-MMSE for a DDM.
    Nll,
    /// Bits/dim against network evaluations and seconds: a DDM's I-MMSE against a CDM's one pass.
    LikelihoodNfe,
    /// FID of samples against the training set (Inception-v3 pool features).
    Fid,
    /// Denoising MSE against the noise level (the paper's Fig. 5).
    Denoising,
    /// Level-classifier accuracy, cross-entropy, confusion matrix and logit profile (Fig. 6).
    Diagnostics,
    /// Out-of-distribution detection by likelihood and by typicality over levels (AUROC).
    Ood,
    /// Unbiased MMD² (Gaussian kernel) between samples and held-out points, for vector data.
    Mmd,
    /// The noise classifier, a DDM's by its I-MMSE likelihood or a CDM's in one pass: the
    /// contrastive loss and accuracy on held-out points (by default for runs trained with
    /// --cdl-weight).
    Cdl,
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    ckpt: CkptArgs,
    /// Report folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, help = format!("Data to evaluate on (default: the training data's test split where it has one): {DATA_SPECS}"))]
    data: Option<String>,
    /// Metrics to compute (default: every one that applies to the model).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Metric>,
    /// Images (or held-out points) for likelihood, denoising, diagnostics and OOD.
    #[arg(long, default_value_t = 2000, value_parser = super::positive::<usize>)]
    n: usize,
    /// A second run trained on the same data, e.g. the DDM to compare a CDM with.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Network evaluations per image for the DDM's I-MMSE likelihood (the largest is its NLL).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8, 16, 32, 64, 128], value_parser = super::positive::<usize>)]
    evaluations: Vec<usize>,
    /// Images for the likelihood-against-evaluations curve.
    #[arg(long, default_value_t = 200, value_parser = super::positive::<usize>)]
    nfe_images: usize,
    /// Samples for FID (0: no FID).
    #[arg(long, default_value_t = 1000)]
    fid_samples: usize,
    /// Training images for the FID reference statistics (computed once, then cached).
    #[arg(long, default_value_t = 10_000, value_parser = super::positive::<usize>)]
    fid_reference: usize,
    /// How FID samples are drawn; --seed also seeds every random draw of the evaluation.
    #[command(flatten)]
    sampling: SampleOptions,
    /// Other data to tell apart from --data (OOD), e.g. fashion-mnist:split=test; repeat the
    /// flag for several.
    #[arg(long)]
    ood: Vec<String>,
    /// Bandwidth h of the MMD's Gaussian kernel exp(−|a − b|²/(2h²)).
    #[arg(long, default_value_t = 0.2, value_parser = super::positive_number)]
    mmd_bandwidth: f64,
    /// Where ζ is drawn for the noise classifier (default: as the run was trained with CDL, else
    /// logistic), so that runs with and without the term are scored alike.
    #[arg(long, value_enum)]
    cdl_zeta: Option<ZetaPrior>,
}

/// What every section needs.
struct Eval<'a> {
    args: &'a EvalArgs,
    model: &'a LoadedModel,
    name: String,
    compare: Option<(String, LoadedModel)>,
    data: String,
    /// What `data` opened to (its density, where it has one, scores the Bayes noise classifier).
    dataset: Dataset,
    /// Evaluation points [n, ..] (CPU, Double).
    x: Tensor,
    /// 8-bit images (x = k/127.5 − 1): bits/dim get the dequantization treatment.
    eight_bit: bool,
}

/// A section's JSON and its markdown.
struct Section {
    key: &'static str,
    json: Value,
    markdown: String,
}

pub fn run(args: EvalArgs) -> Result<()> {
    // One writer per report folder, as per run folder; held until the report is written.
    let _lock = RunLock::acquire(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let model = args.ckpt.load()?;
    let compare = match &args.compare {
        Some(dir) => Some((run_name(dir), args.ckpt.load_from(dir)?)),
        None => None,
    };
    if let Some((name, other)) = &compare {
        if other.config.model.data_shape != model.config.model.data_shape {
            bail!("--compare {name}: its data shape differs from --ckpt's");
        }
    }
    let shape = model.model.data_shape();
    check_count("--n", args.n, shape)?;
    check_count("--fid-samples", args.fid_samples, shape)?;
    check_count("--fid-reference", args.fid_reference, shape)?;
    let data = args.data.clone().or_else(|| test_split(&model.config.data)).unwrap_or(model.config.data.clone());
    let dataset = Dataset::open(&data).with_context(|| format!("--data {data}"))?;
    let x = dataset.first_points(args.n, args.sampling.seed);
    model.model.check_input(&x).with_context(|| format!("--data {data}"))?;
    let eight_bit = is_8bit(&x);
    let ctx =
        Eval { args: &args, model: &model, name: run_name(&args.ckpt.ckpt), compare, data, dataset, x, eight_bit };

    let is_cdm = matches!(model.model, Model::Cdm(_));
    let has_ddm = !is_cdm || ctx.compare.as_ref().is_some_and(|(_, m)| matches!(m.model, Model::Ddm(_)));
    let wanted = |m: Metric| if args.only.is_empty() { true } else { args.only.contains(&m) };
    let applies = |m: Metric| match m {
        Metric::Diagnostics | Metric::Ood => is_cdm,
        Metric::LikelihoodNfe => has_ddm,
        Metric::Fid => args.fid_samples > 0 && x_is_image(&ctx.x),
        Metric::Mmd => ctx.x.dim() == 2,
        Metric::Cdl => !args.only.is_empty() || model.config.train.cdl.is_some(),
        Metric::Nll | Metric::Denoising => true,
    };
    for m in &args.only {
        if !applies(*m) {
            bail!("--only {m:?}: does not apply to this model (diagnostics and OOD need a CDM, likelihood-nfe a DDM, FID image data and --fid-samples > 0, MMD vector data)");
        }
    }
    if wanted(Metric::Ood) && is_cdm && args.ood.is_empty() && !args.only.is_empty() {
        bail!("--only ood needs --ood SPEC (data to tell apart from --data)");
    }
    let mut sections = Vec::new();
    type Runner = fn(&Eval) -> Result<Section>;
    let steps: [(Metric, Runner); 8] = [
        (Metric::Nll, nll),
        (Metric::LikelihoodNfe, likelihood_nfe),
        (Metric::Denoising, denoising),
        (Metric::Diagnostics, diagnostics),
        (Metric::Ood, ood),
        (Metric::Fid, fid),
        (Metric::Mmd, mmd),
        (Metric::Cdl, cdl),
    ];
    for (metric, section) in steps {
        if wanted(metric) && applies(metric) && !(metric == Metric::Ood && args.ood.is_empty()) {
            tracing::info!("eval: {metric:?}");
            sections.push(section(&ctx).with_context(|| format!("eval {metric:?}"))?);
        }
    }
    write_report(&ctx, &sections)
}

fn write_report(ctx: &Eval, sections: &[Section]) -> Result<()> {
    let m = ctx.model;
    let mut report = json!({
        "ckpt": ctx.args.ckpt.ckpt, "step": m.step, "model": format!("{:?}", m.config.model.kind).to_lowercase(),
        "data": ctx.data, "trained_on": m.config.data, "n": ctx.x.size()[0],
        "weights": if ctx.args.ckpt.raw_weights { "raw" } else { "ema" },
        "compare": ctx.compare.as_ref().map(|(name, c)| json!({"ckpt": name, "step": c.step})),
    });
    let mut md = format!(
        "# Evaluation of `{}`\n\n{} at step {} ({} weights), trained on `{}`, evaluated on `{}` ({} points){}.\n",
        ctx.args.ckpt.ckpt.display(),
        report["model"].as_str().unwrap_or("").to_uppercase(),
        m.step,
        report["weights"].as_str().unwrap_or(""),
        m.config.data,
        ctx.data,
        ctx.x.size()[0],
        ctx.compare.as_ref().map_or(String::new(), |(name, c)| format!("; compared with `{name}` at step {}", c.step)),
    );
    for s in sections {
        report[s.key] = s.json.clone();
        md.push('\n');
        md.push_str(&s.markdown);
    }
    let json_path = ctx.args.out.join("report.json");
    write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    write_atomic(&ctx.args.out.join("report.md"), md.as_bytes())?;
    println!("{md}");
    println!("report written to {}", ctx.args.out.display());
    Ok(())
}

/// The run folder's name, for tables and legends.
fn run_name(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn x_is_image(x: &Tensor) -> bool {
    x.dim() == 4
}

/// The models of the report in order: --ckpt, then --compare.
fn models<'a>(ctx: &'a Eval) -> Vec<(&'a str, &'a LoadedModel)> {
    let mut all = vec![(ctx.name.as_str(), ctx.model)];
    all.extend(ctx.compare.as_ref().map(|(name, m)| (name.as_str(), m)));
    all
}

/// Runs `f` with the chunking of `model` and a progress bar.
fn batches_of<T>(ctx: &Eval, model: &LoadedModel, f: impl FnOnce(&Batches) -> cdm::Result<T>) -> Result<T> {
    Ok(with_progress(model, ctx.args.ckpt.batch, f)?)
}

/// The 8-bit convention of the figures where the points are 8-bit images.
fn eight_bit_convention(ctx: &Eval, convention: Dequantization) -> Option<Dequantization> {
    ctx.eight_bit.then_some(convention)
}

/// Draws a chart at `path`. A host without fonts (a GPU host, say) cannot draw its labels, and
/// a report's numbers are not to be lost for a picture, so a chart that fails is a warning.
fn chart(path: &Path, draw: impl FnOnce(&Path) -> cdm::Result<()>) {
    if let Err(e) = draw(path) {
        tracing::warn!("{} not drawn: {e}", path.display());
    }
}

fn mean(t: &Tensor) -> f64 {
    t.mean(Kind::Double).double_value(&[])
}

fn nll(ctx: &Eval) -> Result<Section> {
    let seed = ctx.args.sampling.seed;
    let conventions: Vec<Option<Dequantization>> =
        if ctx.eight_bit { vec![Some(Dequantization::Uniform), Some(Dequantization::Paper)] } else { vec![None] };
    let mut rows = Vec::new();
    let mut md = String::from(
        "## Negative log-likelihood\n\n| model | estimator | convention | points | bits/dim |\n|---|---|---|---|---|\n",
    );
    for (name, model) in models(ctx) {
        let how = Estimator::for_nll(&model.model, ctx.args.evaluations.iter().copied().max().unwrap_or(128));
        let x = match how {
            Estimator::OnePass(_) => ctx.x.shallow_clone(),
            Estimator::Immse(_) => first(&ctx.x, ctx.args.nfe_images),
        };
        for &convention in &conventions {
            let bpd = batches_of(ctx, model, |b| nll_bits_per_dim(&model.model, &x, how, convention, b, seed))?;
            let label = match convention {
                Some(Dequantization::Uniform) => "uniform dequantization, +7 (a bound)",
                Some(Dequantization::Paper) => "paper: no dequantization, +7 (not a bound)",
                None => "continuous density",
            };
            let file = format!(
                "nll_bpd_{name}{}.npy",
                match convention {
                    Some(Dequantization::Uniform) => "_uniform",
                    Some(Dequantization::Paper) => "_paper",
                    None => "",
                }
            );
            npy::write_npy(&ctx.args.out.join(&file), &bpd)?;
            let estimator = how.describe(&model.model);
            let value = mean(&bpd);
            writeln!(md, "| {name} | {estimator} | {label} | {} | {value:.4} |", x.size()[0])?;
            rows.push(json!({"model": name, "estimator": estimator, "convention": label, "n": x.size()[0], "bits_per_dim": value, "per_point": file}));
        }
    }
    md.push_str("\nPer-point values: the `nll_bpd_*.npy` files.\n");
    Ok(Section { key: "nll", json: Value::Array(rows), markdown: md })
}

fn likelihood_nfe(ctx: &Eval) -> Result<Section> {
    let x = first(&ctx.x, ctx.args.nfe_images);
    let convention = eight_bit_convention(ctx, Dequantization::Uniform);
    let n = x.size()[0] as f64;
    let (mut by_nfe, mut by_time, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let abar = ctx.model.model.schedule().alpha_bar(1);
    let mut md = format!(
        "## Likelihood against network evaluations\n\nBoth models estimate log p_1(x), the density at the smallest noise level t = 1 (ᾱ_1 = {abar:.6}, σ_1 = {:.4}), at the same {} points{}: a CDM exactly in one forward pass (Theorem 3.2), a DDM by the I-MMSE estimator, which needs its denoiser only at and above that noise level.\n\n| model | evaluations per point | bits/dim | ms per point |\n|---|---|---|---|\n",
        (1.0 - abar).sqrt(),
        x.size()[0],
        if ctx.eight_bit { " (8-bit images, uniformly dequantized; +7 as for bits/dim of 8-bit data)" } else { "" }
    );
    for (name, model) in models(ctx) {
        let (mut nfe_points, mut time_points) = (Vec::new(), Vec::new());
        for (k, how) in Estimator::of_log_p1(&model.model, &ctx.args.evaluations) {
            let start = Instant::now();
            let seed = ctx.args.sampling.seed;
            let bpd = mean(&batches_of(ctx, model, |b| nll_bits_per_dim(&model.model, &x, how, convention, b, seed))?);
            let ms = start.elapsed().as_secs_f64() * 1000.0 / n;
            writeln!(md, "| {name} | {k} | {bpd:.4} | {ms:.2} |")?;
            rows.push(json!({"model": name, "evaluations": k, "bits_per_dim": bpd, "ms_per_point": ms}));
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
    chart(&ctx.args.out.join("likelihood_vs_nfe.png"), |path| line_chart(path, &axes, &by_nfe));
    let axes = Axes { title: "-log p_1 against time", x: "seconds per point", ..axes };
    chart(&ctx.args.out.join("likelihood_vs_seconds.png"), |path| line_chart(path, &axes, &by_time));
    md.push_str("\n![](likelihood_vs_nfe.png) ![](likelihood_vs_seconds.png)\n");
    Ok(Section { key: "likelihood_vs_evaluations", json: Value::Array(rows), markdown: md })
}

fn denoising(ctx: &Eval) -> Result<Section> {
    let schedule = ctx.model.model.schedule();
    let levels = denoising_levels(schedule.timesteps());
    let x = &ctx.x;
    let eps =
        Noise::new(ctx.args.sampling.seed, 0, x.size()[0] as usize).normal(&x.size()[1..], Kind::Double, Device::Cpu);
    let all = models(ctx);
    if all.iter().any(|(_, m)| m.model.schedule().alpha_bars() != schedule.alpha_bars()) {
        bail!("--compare: the two models use different noise schedules");
    }
    let mut md = format!(
        "## Denoising MSE against noise level\n\nMean squared error per dimension of x̂0 = E[x0 | x_t] on {} points, the same noise for every model.\n\n| level t | ᾱ_t |{}\n|---|---|{}\n",
        x.size()[0],
        all.iter().map(|(n, _)| format!(" {n} |")).collect::<String>(),
        "---|".repeat(all.len())
    );
    let mut curves: Vec<Series> =
        all.iter().map(|(n, _)| Series { label: n.to_string(), points: vec![], markers_only: false }).collect();
    let mut rows = Vec::new();
    for &t in &levels {
        let mut row = json!({"level": t, "alpha_bar": schedule.alpha_bar(t)});
        write!(md, "| {t} | {:.4} |", schedule.alpha_bar(t))?;
        for ((name, model), curve) in all.iter().zip(&mut curves) {
            let mse = batches_of(ctx, model, |b| denoising_mse(&model.model, x, t, &eps, b))?;
            row[*name] = json!(mse);
            write!(md, " {mse:.5} |")?;
            curve.points.push((t as f64, mse));
        }
        md.push('\n');
        rows.push(row);
    }
    let axes = Axes { title: "Denoising MSE per dimension", x: "noise level t", y: "MSE", log_x: false, log_y: true };
    chart(&ctx.args.out.join("denoising_mse.png"), |path| line_chart(path, &axes, &curves));
    md.push_str("\n![](denoising_mse.png)\n");
    Ok(Section { key: "denoising_mse", json: Value::Array(rows), markdown: md })
}

fn diagnostics(ctx: &Eval) -> Result<Section> {
    let schedule = ctx.model.model.schedule();
    let classifier = ctx.model.model.classifier()?;
    let classes = schedule.num_classes();
    let mut rng = Rng::new(ctx.args.sampling.seed ^ 0xd1a6);
    let metrics = batches_of(ctx, ctx.model, |b| level_classifier(classifier, &ctx.x, &mut rng, b))?;
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
    chart(&ctx.args.out.join("confusion.png"), |path| {
        matrix_heatmap(path, &title, "true level bin", "predicted level bin", &normalised)
    });

    // Logit profile (Fig. 6): mean log-softmax over all levels, for points at a few true levels.
    let t_max = schedule.timesteps();
    let probe = ctx.x.narrow(0, 0, 64.min(metrics.n as i64));
    let mut profiles = Vec::new();
    for f in [0.1, 0.3, 0.5, 0.7, 0.9] {
        let t = ((f * t_max as f64).round() as usize).max(1);
        let profile = batches_of(ctx, ctx.model, |b| logit_profile(classifier, &probe, t, &mut rng, b))?;
        profiles.push(Series {
            label: format!("true level {t}"),
            points: profile.iter().enumerate().map(|(k, &v)| (k as f64, v.max(-30.0))).collect(),
            markers_only: false,
        });
    }
    let axes =
        Axes { title: "Mean log-softmax over levels", x: "level k", y: "log p(k | x_t)", log_x: false, log_y: false };
    chart(&ctx.args.out.join("logit_profile.png"), |path| line_chart(path, &axes, &profiles));
    let drift = drift_section(ctx, &mut rng)?;
    let m = &metrics;
    let md = format!(
        "## Level classifier\n\n{} points, each noised to a level spread evenly over 0..={}.\n\n| accuracy | within ±{} levels | mean abs. level error | cross-entropy (nats) | uniform guess CE |\n|---|---|---|---|---|\n| {:.4} | {:.4} | {:.2} | {:.4} | {:.4} |\n\n![](confusion.png) ![](logit_profile.png)\n",
        m.n,
        classes - 1,
        m.within_levels,
        m.accuracy,
        m.accuracy_within,
        m.mean_abs_level_error,
        m.cross_entropy,
        (classes as f64).ln()
    ) + &drift.markdown;
    let json = json!({"n": m.n, "accuracy": m.accuracy, "within_levels": m.within_levels, "accuracy_within": m.accuracy_within, "mean_abs_level_error": m.mean_abs_level_error, "cross_entropy": m.cross_entropy, "confusion_bins": bins, "confusion": m.confusion, "sampler_drift": drift.json});
    Ok(Section { key: "classifier", json, markdown: md })
}

/// Samples drawn for the sampler-drift diagnostic.
const DRIFT_SAMPLES: usize = 32;

/// [`sampler_drift`] for `--sampler` with `--steps`, as a table and a plot.
fn drift_section(ctx: &Eval, rng: &mut Rng) -> Result<Section> {
    let opts = &ctx.args.sampling;
    let n = DRIFT_SAMPLES.min(ctx.x.size()[0] as usize);
    let sampler = format!("{:?}", opts.sampler).to_lowercase();
    let rows = batches_of(ctx, ctx.model, |b| sampler_drift(&ctx.model.model, &ctx.x, opts, n, rng, b))?;
    let on_samples: Vec<(f64, f64)> = rows.iter().map(|r| (r.level as f64, r.sampler_states)).collect();
    let on_real: Vec<(f64, f64)> = rows.iter().map(|r| (r.level as f64, r.real_points)).collect();
    let scheduled = on_real.iter().map(|&(t, _)| (t, t)).collect();
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
    chart(&ctx.args.out.join("sampler_drift.png"), |path| line_chart(path, &axes, &series));
    let mut md = format!(
        "\n### Sampler drift\n\n{n} samples, {} with {} steps (the sampling flags); at each step, the mean argmax level of the classifier on the sampler's states and on {n} real points noised to the same level.\n\n| level | on sampler states | on real points |\n|---|---|---|\n",
        sampler,
        opts.steps
    );
    let every = (rows.len() / 10).max(1);
    for (k, r) in rows.iter().enumerate() {
        if k % every == 0 || k + 1 == rows.len() {
            writeln!(md, "| {} | {:.1} | {:.1} |", r.level, r.sampler_states, r.real_points)?;
        }
    }
    md.push_str("\n![](sampler_drift.png)\n");
    Ok(Section { key: "sampler_drift", json: serde_json::to_value(&rows)?, markdown: md })
}

/// log p_t(x)/D at `levels` for every point ([N, L]), uniformly dequantized 8-bit images.
fn profiles(ctx: &Eval, x: &Tensor, levels: &[usize]) -> Result<Tensor> {
    let classifier = ctx.model.model.classifier()?;
    let dequantize_seed = ctx.eight_bit.then_some(ctx.args.sampling.seed ^ 0x00d);
    batches_of(ctx, ctx.model, |b| level_log_densities(classifier, x, levels, dequantize_seed, b))
}

fn ood(ctx: &Eval) -> Result<Section> {
    let levels = ood_levels(ctx.model.model.schedule().timesteps());
    let n = ctx.x.size()[0] as usize;
    // The typical profile is fitted on training points, never on the test points scored.
    let train = Dataset::open(&ctx.model.config.data)?;
    let fit_points = train.first_points(n, ctx.args.sampling.seed ^ 0xf17);
    let fitted = profiles(ctx, &fit_points, &levels)?;
    npy::write_npy(&ctx.args.out.join("ood_profile_train.npy"), &fitted)?;
    let typicality = Typicality::fit(&fitted)?;
    let inside = profiles(ctx, &ctx.x, &levels)?;
    npy::write_npy(&ctx.args.out.join("ood_profile_data.npy"), &inside)?;
    let mut md = format!(
        "## Out-of-distribution detection\n\nAUROC of telling `{}` ({n} points, positive) from other data by a score from one forward pass: the likelihood log p(x), and typicality of the profile log p_t(x)/D over {} levels (t = 0, T/20, .., T): its z-scores against the per-level mean and spread of {n} training points, combined as minus their sum of squares or minus the largest |z|. Uniform dequantization for 8-bit images. The profiles are in `ood_profile_*.npy` ([points, levels], nats/dim).\n\n| other data | points | AUROC likelihood | AUROC typicality Σz² | AUROC typicality max\\|z\\| |\n|---|---|---|---|---|\n",
        ctx.data,
        levels.len()
    );
    let (mut rows, mut by_level) = (Vec::new(), Vec::new());
    for spec in &ctx.args.ood {
        let other = Dataset::open(spec).with_context(|| format!("--ood {spec}"))?;
        let y = other.first_points(n, ctx.args.sampling.seed ^ 0x00d);
        ctx.model.model.check_input(&y).with_context(|| format!("--ood {spec}"))?;
        let outside = profiles(ctx, &y, &levels)?;
        npy::write_npy(&ctx.args.out.join(format!("ood_profile_{}.npy", file_stem(spec))), &outside)?;
        let scores = OodScores::of(&typicality, &inside, &outside)?;
        let per_level: Vec<(f64, f64)> = levels.iter().map(|&t| t as f64).zip(scores.by_level).collect();
        let (likelihood, sum_sq, max_abs) =
            (scores.likelihood, scores.typicality_sum_squares, scores.typicality_max_abs);
        writeln!(md, "| `{spec}` | {} | {likelihood:.4} | {sum_sq:.4} | {max_abs:.4} |", y.size()[0])?;
        rows.push(json!({"other": spec, "n": y.size()[0], "auroc_likelihood": likelihood, "auroc_typicality_sum_squares": sum_sq, "auroc_typicality_max_abs": max_abs, "auroc_log_p_t_by_level": per_level}));
        by_level.push(Series { label: spec.clone(), points: per_level, markers_only: false });
    }
    let axes =
        Axes { title: "AUROC of log p_t(x) at each level", x: "level t", y: "AUROC", log_x: false, log_y: false };
    chart(&ctx.args.out.join("ood_auroc_by_level.png"), |path| line_chart(path, &axes, &by_level));
    md.push_str("\nAUROC of the likelihood at each single level t (0.5: chance; below 0.5, the other data score higher):\n\n![](ood_auroc_by_level.png)\n");
    Ok(Section { key: "ood", json: Value::Array(rows), markdown: md })
}

fn fid(ctx: &Eval) -> Result<Section> {
    let args = ctx.args;
    let device = ctx.model.vs.device();
    let inception = Inception::load(device)?;
    tracing::info!(
        "FID reference statistics of {} images of {} (cached per user)",
        args.fid_reference,
        ctx.model.config.data
    );
    let reference = reference_stats(&inception, &ctx.model.config.data, args.fid_reference)?;
    let start = Instant::now();
    let drawn = draw_samples(ctx.model, args.fid_samples, &args.sampling, args.ckpt.batch, None, &mut |_| {})?;
    let (samples, cost) = (drawn.x, drawn.stats);
    let sampling_s = start.elapsed().as_secs_f64();
    image_grid(&args.out.join("fid_samples.png"), &first(&samples, 100), 10)?;
    let score = frechet_distance(&reference, &inception.stats(&samples, 50)?)?;
    let s = &args.sampling;
    let conditioning = match (ctx.model.config.model.backbone.num_labels(), s.unconditional, s.class) {
        (0, _, _) | (_, true, _) => "unconditional".to_string(),
        (_, _, Some(c)) => format!("class {c}"),
        _ => "class-conditional, classes in turn".to_string(),
    };
    let guidance = if s.guidance != 0.0 { format!(", guidance w = {}", s.guidance) } else { String::new() };
    let parallel = match s.parallel {
        Some(p) => format!(
            ", parallel {:?} (window {p}, tol {}): {:.1} iterations and {:.1} evaluations per trajectory, mean of {} batches",
            s.solver,
            s.tol,
            cost.iterations_per_batch(),
            cost.evaluations_per_trajectory(),
            cost.batches
        )
        .to_lowercase(),
        None => String::new(),
    };
    let sampler =
        format!("{} {} steps, {conditioning}{guidance}{parallel}", format!("{:?}", s.sampler).to_lowercase(), s.steps);
    let md = format!(
        "## FID\n\n| samples | sampler | reference | FID |\n|---|---|---|---|\n| {} | {sampler} | {} training images of `{}` | {score:.2} |\n\nSampling took {sampling_s:.0} s. The first 100 samples:\n\n![](fid_samples.png)\n",
        args.fid_samples, reference.n, ctx.model.config.data
    );
    let json = json!({"fid": score, "samples": args.fid_samples, "sampler": sampler, "reference_images": reference.n, "reference_data": ctx.model.config.data, "sampling_seconds": sampling_s, "sampling_cost": cost});
    Ok(Section { key: "fid", json, markdown: md })
}

/// MMD² of each model's samples (as many as held-out points, drawn as --sampler says) against
/// the held-out points; with a parallel window of every step, also after each iteration (the
/// CDL paper's measure: iterations to a given MMD²), plotted.
fn mmd(ctx: &Eval) -> Result<Section> {
    let (args, n) = (ctx.args, ctx.x.size()[0] as usize);
    let h = args.mmd_bandwidth;
    let s = &args.sampling;
    let sampling = SampleOptions { trace: s.parallel.is_some_and(|p| p >= s.steps), ..s.clone() };
    let mut md = format!(
        "## MMD\n\nUnbiased MMD² between {n} samples ({} {} steps{}) and {n} held-out points, Gaussian kernel h = {h}.\n\n| model | MMD² | iterations per batch | network evaluations per sample |\n|---|---|---|---|\n",
        format!("{:?}", s.sampler).to_lowercase(),
        s.steps,
        s.parallel.map_or(String::new(), |p| format!(
            ", parallel {} window {p}, tol {}, init {}",
            format!("{:?}", s.solver).to_lowercase(),
            s.tol,
            format!("{:?}", s.parallel_init).to_lowercase()
        ))
    );
    let (mut rows, mut curves) = (Vec::new(), Vec::new());
    for (name, model) in models(ctx) {
        let got = batches_of(ctx, model, |b| samples_mmd(&model.model, &ctx.x, &sampling, h, b))?;
        let cost = got.cost;
        writeln!(
            md,
            "| {name} | {:.5} | {:.1} | {:.1} |",
            got.mmd2,
            cost.iterations_per_batch(),
            cost.evaluations_per_trajectory()
        )?;
        let points = got.per_iteration.iter().enumerate().map(|(k, &v)| ((k + 1) as f64, v)).collect();
        curves.push(Series { label: name.to_string(), points, markers_only: false });
        rows.push(
            json!({"model": name, "mmd2": got.mmd2, "sampling_cost": cost, "mmd2_per_iteration": got.per_iteration}),
        );
    }
    if sampling.trace {
        let axes =
            Axes {
                title: "MMD² after each parallel iteration", x: "iteration", y: "MMD²", log_x: false, log_y: true
            };
        chart(&args.out.join("mmd_iterations.png"), |path| line_chart(path, &axes, &curves));
        md.push_str("\nMMD² after each iteration (`mmd2_per_iteration` in report.json; values ≤ 0 are not drawn):\n\n![](mmd_iterations.png)\n");
    }
    Ok(Section { key: "mmd", json: json!({"bandwidth": h, "points": n, "models": rows}), markdown: md })
}

/// The held-out points as the run was trained on them (uniformly dequantized when it was), the
/// run's ζ prior (the default one otherwise) and `--evaluations` draws per log-density.
fn cdl(ctx: &Eval) -> Result<Section> {
    let (model, seed) = (ctx.model, ctx.args.sampling.seed);
    let x = first(&ctx.x, ctx.args.nfe_images);
    let dequantized = model.config.train.dequantize && ctx.eight_bit;
    let x = if dequantized { dequantize(&x, Dequantization::Uniform, &mut Rng::new(seed ^ 0x00d)) } else { x };
    let draws = ctx.args.evaluations.iter().copied().max().unwrap_or(128);
    let run_cdl = model.config.train.cdl.unwrap_or_default();
    let cdl = CdlConfig { draws, zeta: ctx.args.cdl_zeta.unwrap_or(run_cdl.zeta), ..run_cdl };
    let (score, how) = match &model.model {
        Model::Cdm(classifier) => (
            batches_of(ctx, model, |b| cdm_noise_classifier(classifier, &x, &cdl, b, seed))?,
            "in one forward pass (the CDM's level densities)".to_string(),
        ),
        Model::Ddm(_) => (
            batches_of(ctx, model, |b| noise_classifier(&model.model, &x, &cdl, b, seed))?,
            format!("with {draws} draws per log-density"),
        ),
    };
    // The Bayes classifier on the same points, where the data's density is known after noise too.
    let trained = model.model.schedule().logsnr_proposal();
    let exact = match ctx.dataset.density() {
        Some(density) if density.log_prob_noisy(&first(&x, 1), 0.5).is_some() => {
            Some(batches_of(ctx, model, |b| exact_noise_classifier(density, &trained, &x, &cdl, b, seed))?)
        }
        _ => None,
    };
    let mut md = format!(
        "## Noise classifier (contrastive diffusion loss)\n\n{} held-out points{}, each kept or noised at log SNR ζ drawn from {} by a fair coin, told apart by log p_ζ(z) − log p(z) {how}, unconditionally.\n\n| classifier | loss (chance {:.4}) | accuracy |\n|---|---|---|\n| the model's | {:.4} | {:.4} |\n",
        score.n,
        if dequantized { " (uniformly dequantized, as trained)" } else { "" },
        cdl.zeta,
        2f64.ln(),
        score.loss,
        score.accuracy
    );
    if let Some(e) = &exact {
        writeln!(md, "| exact densities (Bayes), same points | {:.4} | {:.4} |", e.loss, e.accuracy)?;
    }
    let json = json!({"zeta": cdl.zeta, "draws": draws, "dequantized": dequantized, "score": score, "exact": exact});
    Ok(Section { key: "cdl", json, markdown: md })
}
