//! The `--config` file of `cdm train`: TOML (or JSON, by the `.json` extension) with any of
//! `data`, `model`, `gaussian_base`, `base_per_class`, `[schedule]`, `[backbone]` and `[train]`.
//! Each part is checked when the file is read, so a bad value is named with the file before
//! any data is opened.
use std::path::Path;

use serde::Deserialize;

use crate::model::ModelKind;
use crate::nets::BackboneConfig;
use crate::schedule::{Schedule, ScheduleConfig};
use crate::train::TrainConfig;
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
    pub train: Option<TrainConfig>,
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
        if let Some(train) = &file.train {
            train.validate().map_err(named)?;
        }
        Ok(file)
    }
}
