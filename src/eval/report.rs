//! A `cdm eval` report as types: a header and one optional section per metric, each
//! `Serialize + Deserialize` (report.json) with its own Markdown (report.md). [`super::evaluate`]
//! fills it; `cdm plot` and scripts read it back through these types.
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{DriftRow, LevelMetrics, NoiseClassifierScore};
use crate::checkpoint::write_atomic;
use crate::loss::ZetaPrior;
use crate::sample::SamplingStats;
use crate::{Error, Result};

/// The parts of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
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

/// A report: what was evaluated, then each section that was computed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub header: Header,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll: Option<Vec<NllRow>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub likelihood_vs_evaluations: Option<LikelihoodCurve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoising_mse: Option<Denoising>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<Diagnostics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ood: Option<Ood>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<Fid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmd: Option<Mmd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdl: Option<NoiseClassifier>,
}

/// The model and data a report is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The run folder.
    pub ckpt: String,
    pub step: u64,
    /// `cdm` or `ddm`.
    pub model: String,
    /// The data evaluated on.
    pub data: String,
    pub trained_on: String,
    /// Evaluation points.
    pub n: usize,
    /// `ema` or `raw`.
    pub weights: String,
    pub compare: Option<Compared>,
}

/// The second run of a report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Compared {
    /// Its name in the tables (the run folder's name).
    pub ckpt: String,
    pub step: u64,
}

/// Bits/dim of one model in one convention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NllRow {
    pub model: String,
    pub estimator: String,
    pub convention: String,
    pub n: usize,
    pub bits_per_dim: f64,
    /// The per-point values: a `.npy` file of the report folder.
    pub per_point: String,
}

/// log p_1 by a CDM's one pass and a DDM's I-MMSE at several budgets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LikelihoodCurve {
    /// ᾱ_1 of the level both models estimate the density at.
    pub alpha_bar: f64,
    pub points: usize,
    /// The points are 8-bit images (uniformly dequantized, +7 as for bits/dim of 8-bit data).
    pub eight_bit: bool,
    pub rows: Vec<LikelihoodPoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LikelihoodPoint {
    pub model: String,
    pub evaluations: usize,
    pub bits_per_dim: f64,
    pub ms_per_point: f64,
}

/// The denoising MSE per dimension of each model at a few levels (the same noise for all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Denoising {
    pub points: usize,
    /// The models, in the order of each row's `mse`.
    pub models: Vec<String>,
    pub rows: Vec<DenoisingRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenoisingRow {
    pub level: usize,
    pub alpha_bar: f64,
    pub mse: Vec<f64>,
}

/// The level classifier of a CDM, and where its sampler drifts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    #[serde(flatten)]
    pub metrics: LevelMetrics,
    /// Levels 0..=T+1.
    pub classes: usize,
    pub sampler_drift: Drift,
}

/// The classifier on a sampler's states against real points at the same levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub samples: usize,
    /// The sampler and its steps, in words.
    pub sampler: String,
    pub rows: Vec<DriftRow>,
}

/// Out-of-distribution detection against each other data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ood {
    pub points: usize,
    pub levels: Vec<usize>,
    pub rows: Vec<OodRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodRow {
    pub other: String,
    pub n: usize,
    pub auroc_likelihood: f64,
    pub auroc_typicality_sum_squares: f64,
    pub auroc_typicality_max_abs: f64,
    /// (level, AUROC of log p_t alone).
    pub auroc_log_p_t_by_level: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fid {
    pub fid: f64,
    pub samples: usize,
    /// The sampler, its steps, conditioning and parallel settings, in words.
    pub sampler: String,
    pub reference_images: usize,
    pub reference_data: String,
    pub sampling_seconds: f64,
    pub sampling_cost: SamplingStats,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mmd {
    pub bandwidth: f64,
    pub points: usize,
    pub sampler: String,
    pub models: Vec<MmdRow>,
    /// The MMD² was recorded after every parallel iteration (and plotted).
    pub per_iteration: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MmdRow {
    pub model: String,
    pub mmd2: f64,
    pub sampling_cost: SamplingStats,
    pub mmd2_per_iteration: Vec<f64>,
}

/// The noise classifier of the contrastive diffusion loss on held-out points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseClassifier {
    pub zeta: ZetaPrior,
    pub draws: usize,
    /// The points were uniformly dequantized, as the run was trained.
    pub dequantized: bool,
    /// How the model's log-densities were computed, in words.
    pub how: String,
    pub score: NoiseClassifierScore,
    /// The Bayes classifier on the same points, where the data's density is known after noise.
    pub exact: Option<NoiseClassifierScore>,
}

impl Report {
    /// Reads a report.json.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: not a `cdm eval` report.json: {e}", path.display())))
    }

    /// Writes report.json and report.md into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|e| Error::Data(format!("report: {e}")))?;
        write_atomic(&dir.join("report.json"), json.as_bytes())?;
        write_atomic(&dir.join("report.md"), self.markdown().as_bytes())
    }

    /// The whole report in Markdown, the pictures of its folder linked.
    pub fn markdown(&self) -> String {
        let h = &self.header;
        let compared =
            h.compare.as_ref().map_or(String::new(), |c| format!("; compared with `{}` at step {}", c.ckpt, c.step));
        let mut md = format!(
            "# Evaluation of `{}`\n\n{} at step {} ({} weights), trained on `{}`, evaluated on `{}` ({} points){compared}.\n",
            h.ckpt,
            h.model.to_uppercase(),
            h.step,
            h.weights,
            h.trained_on,
            h.data,
            h.n
        );
        let sections = [
            self.nll.as_ref().map(|rows| nll_markdown(rows)),
            self.likelihood_vs_evaluations.as_ref().map(LikelihoodCurve::markdown),
            self.denoising_mse.as_ref().map(Denoising::markdown),
            self.classifier.as_ref().map(Diagnostics::markdown),
            self.ood.as_ref().map(|o| o.markdown(&h.data)),
            self.fid.as_ref().map(Fid::markdown),
            self.mmd.as_ref().map(Mmd::markdown),
            self.cdl.as_ref().map(NoiseClassifier::markdown),
        ];
        for section in sections.into_iter().flatten() {
            md.push('\n');
            md.push_str(&section);
        }
        md
    }
}

fn nll_markdown(rows: &[NllRow]) -> String {
    let mut md = String::from(
        "## Negative log-likelihood\n\n| model | estimator | convention | points | bits/dim |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(md, "| {} | {} | {} | {} | {:.4} |", r.model, r.estimator, r.convention, r.n, r.bits_per_dim);
    }
    md + "\nPer-point values: the `nll_bpd_*.npy` files.\n"
}

impl LikelihoodCurve {
    fn markdown(&self) -> String {
        let mut md = format!(
            "## Likelihood against network evaluations\n\nBoth models estimate log p_1(x), the density at the smallest noise level t = 1 (ᾱ_1 = {:.6}, σ_1 = {:.4}), at the same {} points{}: a CDM exactly in one forward pass (Theorem 3.2), a DDM by the I-MMSE estimator, which needs its denoiser only at and above that noise level.\n\n| model | evaluations per point | bits/dim | ms per point |\n|---|---|---|---|\n",
            self.alpha_bar,
            (1.0 - self.alpha_bar).sqrt(),
            self.points,
            if self.eight_bit { " (8-bit images, uniformly dequantized; +7 as for bits/dim of 8-bit data)" } else { "" }
        );
        for r in &self.rows {
            let _ = writeln!(md, "| {} | {} | {:.4} | {:.2} |", r.model, r.evaluations, r.bits_per_dim, r.ms_per_point);
        }
        md + "\n![](likelihood_vs_nfe.png) ![](likelihood_vs_seconds.png)\n"
    }
}

impl Denoising {
    fn markdown(&self) -> String {
        let mut md = format!(
            "## Denoising MSE against noise level\n\nMean squared error per dimension of x̂0 = E[x0 | x_t] on {} points, the same noise for every model.\n\n| level t | ᾱ_t |{}\n|---|---|{}\n",
            self.points,
            self.models.iter().map(|n| format!(" {n} |")).collect::<String>(),
            "---|".repeat(self.models.len())
        );
        for r in &self.rows {
            let _ = write!(md, "| {} | {:.4} |", r.level, r.alpha_bar);
            for mse in &r.mse {
                let _ = write!(md, " {mse:.5} |");
            }
            md.push('\n');
        }
        md + "\n![](denoising_mse.png)\n"
    }
}

impl Diagnostics {
    fn markdown(&self) -> String {
        let m = &self.metrics;
        let mut md = format!(
            "## Level classifier\n\n{} points, each noised to a level spread evenly over 0..={}.\n\n| accuracy | within ±{} levels | mean abs. level error | cross-entropy (nats) | uniform guess CE |\n|---|---|---|---|---|\n| {:.4} | {:.4} | {:.2} | {:.4} | {:.4} |\n\n![](confusion.png) ![](logit_profile.png)\n",
            m.n,
            self.classes - 1,
            m.within_levels,
            m.accuracy,
            m.accuracy_within,
            m.mean_abs_level_error,
            m.cross_entropy,
            (self.classes as f64).ln()
        );
        let d = &self.sampler_drift;
        let _ = write!(
            md,
            "\n### Sampler drift\n\n{n} samples, {} (the sampling flags); at each step, the mean argmax level of the classifier on the sampler's states and on {n} real points noised to the same level.\n\n| level | on sampler states | on real points |\n|---|---|---|\n",
            d.sampler,
            n = d.samples
        );
        let every = (d.rows.len() / 10).max(1);
        for (k, r) in d.rows.iter().enumerate() {
            if k % every == 0 || k + 1 == d.rows.len() {
                let _ = writeln!(md, "| {} | {:.1} | {:.1} |", r.level, r.sampler_states, r.real_points);
            }
        }
        md + "\n![](sampler_drift.png)\n"
    }
}

impl Ood {
    fn markdown(&self, data: &str) -> String {
        let n = self.points;
        let mut md = format!(
            "## Out-of-distribution detection\n\nAUROC of telling `{data}` ({n} points, positive) from other data by a score from one forward pass: the likelihood log p(x), and typicality of the profile log p_t(x)/D over {} levels (t = 0, T/20, .., T): its z-scores against the per-level mean and spread of {n} training points, combined as minus their sum of squares or minus the largest |z|. Uniform dequantization for 8-bit images. The profiles are in `ood_profile_*.npy` ([points, levels], nats/dim).\n\n| other data | points | AUROC likelihood | AUROC typicality Σz² | AUROC typicality max\\|z\\| |\n|---|---|---|---|---|\n",
            self.levels.len()
        );
        for r in &self.rows {
            let _ = writeln!(
                md,
                "| `{}` | {} | {:.4} | {:.4} | {:.4} |",
                r.other, r.n, r.auroc_likelihood, r.auroc_typicality_sum_squares, r.auroc_typicality_max_abs
            );
        }
        md + "\nAUROC of the likelihood at each single level t (0.5: chance; below 0.5, the other data score higher):\n\n![](ood_auroc_by_level.png)\n"
    }
}

impl Fid {
    fn markdown(&self) -> String {
        format!(
            "## FID\n\n| samples | sampler | reference | FID |\n|---|---|---|---|\n| {} | {}{} | {} training images of `{}` | {:.2} |\n\nSampling took {:.0} s. The first 100 samples:\n\n![](fid_samples.png)\n",
            self.samples,
            self.sampler,
            parallel_cost(&self.sampling_cost),
            self.reference_images,
            self.reference_data,
            self.fid,
            self.sampling_seconds
        )
    }
}

/// A parallel run's iterations and evaluations, for a table cell ("" for a sequential run).
fn parallel_cost(cost: &SamplingStats) -> String {
    if cost.iterations == cost.steps * cost.batches {
        return String::new();
    }
    format!(
        ": {:.1} iterations and {:.1} evaluations per trajectory, mean of {} batches",
        cost.iterations_per_batch(),
        cost.evaluations_per_trajectory(),
        cost.batches
    )
}

impl Mmd {
    fn markdown(&self) -> String {
        let n = self.points;
        let mut md = format!(
            "## MMD\n\nUnbiased MMD² between {n} samples ({}) and {n} held-out points, Gaussian kernel h = {}.\n\n| model | MMD² | iterations per batch | network evaluations per sample |\n|---|---|---|---|\n",
            self.sampler, self.bandwidth
        );
        for r in &self.models {
            let cost = &r.sampling_cost;
            let _ = writeln!(
                md,
                "| {} | {:.5} | {:.1} | {:.1} |",
                r.model,
                r.mmd2,
                cost.iterations_per_batch(),
                cost.evaluations_per_trajectory()
            );
        }
        if self.per_iteration {
            md.push_str("\nMMD² after each iteration (`mmd2_per_iteration` in report.json; values ≤ 0 are not drawn):\n\n![](mmd_iterations.png)\n");
        }
        md
    }
}

impl NoiseClassifier {
    fn markdown(&self) -> String {
        let mut md = format!(
            "## Noise classifier (contrastive diffusion loss)\n\n{} held-out points{}, each kept or noised at log SNR ζ drawn from {} by a fair coin, told apart by log p_ζ(z) − log p(z) {}, unconditionally.\n\n| classifier | loss (chance {:.4}) | accuracy |\n|---|---|---|\n| the model's | {:.4} | {:.4} |\n",
            self.score.n,
            if self.dequantized { " (uniformly dequantized, as trained)" } else { "" },
            self.zeta,
            self.how,
            2f64.ln(),
            self.score.loss,
            self.score.accuracy
        );
        if let Some(e) = &self.exact {
            let _ = writeln!(md, "| exact densities (Bayes), same points | {:.4} | {:.4} |", e.loss, e.accuracy);
        }
        md
    }
}
