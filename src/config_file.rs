//! The `--config` file of `cdm train`: TOML (or JSON, by the `.json` extension) with any of
//! `data`, `model`, `gaussian_base`, `base_per_class`, `[schedule]`, `[backbone]` and `[train]`.
//! Each part is checked when the file is read, so a bad value is named with the file before
//! any data is opened.
use std::path::Path;

use serde::Deserialize;

use crate::data::Dataset;
use crate::model::{ModelConfig, ModelKind};
use crate::nets::{BackboneConfig, MlpConfig, UnetConfig};
use crate::schedule::{Schedule, ScheduleConfig};
use crate::train::{RunConfig, TrainConfig};
use crate::{Error, Result};

/// The optional parts of a run config that a `--config` file may give.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data: Option<String>,
    pub model: Option<ModelKind>,
    pub gaussian_base: Option<bool>,
    pub base_per_class: Option<bool>,
    pub schedule: Option<ScheduleConfig>,
    pub backbone: Option<BackboneConfig>,
    /// The `[train]` table as written: the fields it sets go over the defaults that suit the
    /// data (see [`ConfigFile::train_over`]), so `steps = 100` alone keeps an image run's batch.
    pub train: Option<serde_json::Value>,
}

impl ConfigFile {
    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// Parses and checks `text`, the contents of `path` (JSON if its extension is `.json`,
    /// else TOML); errors name the file and the field.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let bad = |e: &dyn std::fmt::Display| Error::Config(format!("{}: {e}", path.display()));
        let file: ConfigFile = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(text).map_err(|e| bad(&e))?
        } else {
            toml::from_str(text).map_err(|e| bad(&e))?
        };
        // Each part's own error, with the file named in front.
        let named = |e: Error| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        };
        if let Some(schedule) = file.schedule {
            Schedule::new(schedule).map_err(named)?;
        }
        if let Some(backbone) = &file.backbone {
            backbone.validate().map_err(named)?;
        }
        file.train_over(TrainConfig::default()).map_err(named)?;
        Ok(file)
    }

    /// The settings of a saved run as a file would give them: resuming it repeats none of them.
    pub fn from_run(saved: RunConfig) -> Result<Self> {
        Ok(ConfigFile {
            data: Some(saved.data),
            model: Some(saved.model.kind),
            gaussian_base: Some(saved.model.gaussian_base),
            base_per_class: Some(saved.model.base_per_class),
            schedule: Some(saved.model.schedule),
            backbone: Some(saved.model.backbone),
            train: Some(serde_json::to_value(saved.train).map_err(|e| Error::Config(format!("train: {e}")))?),
        })
    }

    /// A run's settings: the defaults that suit `dataset` (opened from the spec `data`) with
    /// this file's over them. Images get the tiny UNet and [`TrainConfig::images`], other data
    /// the MLP and [`TrainConfig::default`].
    pub fn run_config(&self, data: String, dataset: &Dataset) -> Result<RunConfig> {
        let data_shape = dataset.shape();
        let images = data_shape.len() == 3;
        let train = self.train_over(if images { TrainConfig::images() } else { TrainConfig::default() })?;
        let backbone = self.backbone.clone().unwrap_or_else(|| match images {
            true => BackboneConfig::Unet(UnetConfig::tiny()),
            false => BackboneConfig::Mlp(MlpConfig::default()),
        });
        let model = ModelConfig {
            kind: self.model.unwrap_or_default(),
            schedule: self.schedule.unwrap_or_default(),
            backbone,
            data_shape,
            gaussian_base: self.gaussian_base.unwrap_or(false),
            base_per_class: self.base_per_class.unwrap_or(false),
        };
        Ok(RunConfig { data, model, train })
    }

    /// The `[train]` table's fields over `defaults`, checked.
    pub fn train_over(&self, defaults: TrainConfig) -> Result<TrainConfig> {
        let Some(table) = &self.train else { return Ok(defaults) };
        let bad = |e: &dyn std::fmt::Display| Error::Config(format!("train: {e}"));
        let mut merged = serde_json::to_value(defaults).map_err(|e| bad(&e))?;
        match (merged.as_object_mut(), table.as_object()) {
            (Some(fields), Some(over)) => fields.extend(over.iter().map(|(k, v)| (k.clone(), v.clone()))),
            _ => return Err(bad(&"expected a table of fields")),
        }
        let train: TrainConfig = serde_json::from_value(merged).map_err(|e| bad(&e))?;
        train.validate()?;
        Ok(train)
    }
}
