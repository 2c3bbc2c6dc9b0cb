//! A run's settings resolved in the library (`train::resolve`): the defaults of the data kind,
//! under a config file or the run being resumed, under the overrides of this launch.
use std::path::Path;

use cdm::checkpoint::{write_atomic, CONFIG_FILE};
use cdm::config_file::ConfigFile;
use cdm::data::Dataset;
use cdm::model::ModelKind;
use cdm::nets::{BackboneConfig, MlpConfig, UnetConfig};
use cdm::train::config::EDGE_FOURIER;
use cdm::train::resolve::{resolve, BackboneChoice, Overrides, UnetPreset};
use cdm::train::{RunConfig, TrainConfig};

fn resolved(out: &Path, config: Option<&Path>, overrides: &Overrides) -> cdm::Result<RunConfig> {
    let file = config.map(ConfigFile::read).transpose()?;
    resolve(out, file.as_ref(), overrides, Dataset::open).map(|(config, _)| config)
}

fn data(spec: &str) -> Overrides {
    Overrides { data: Some(spec.into()), ..Overrides::default() }
}

#[test]
fn each_data_kind_gets_its_defaults() {
    let out = tempfile::tempdir().unwrap();
    let points = resolved(out.path(), None, &data("gmm2d")).unwrap();
    assert_eq!(points.train, TrainConfig::vectors());
    assert_eq!(points.model.backbone, BackboneConfig::Mlp(MlpConfig::default()));
    assert_eq!((points.model.kind, points.model.data_shape.as_slice()), (ModelKind::Cdm, &[2][..]));
    assert_eq!(points.model.schedule.timesteps, 50);
    // A box's faces are hard edges: Fourier features too.
    let cube = resolved(out.path(), None, &data("uniform:d=4,g=1")).unwrap();
    let mlp = MlpConfig { fourier: EDGE_FOURIER.to_vec(), ..MlpConfig::default() };
    assert_eq!((cube.train, cube.model.backbone), (TrainConfig::vectors(), BackboneConfig::Mlp(mlp)));
    // The levers are a CDM's: a DDM of the same data keeps the settings it had.
    let ddm = resolved(out.path(), None, &Overrides { model: Some(ModelKind::Ddm), ..data("gmm2d") }).unwrap();
    assert_eq!(ddm.train, TrainConfig::default());
    assert_eq!(ddm.model.backbone, BackboneConfig::Mlp(MlpConfig::default()));
    assert_eq!(ddm.model.schedule.timesteps, 1000);
    let images = resolved(out.path(), None, &data("uniform:d=1x8x8,g=2")).unwrap();
    assert_eq!(images.train, TrainConfig::images());
    assert_eq!(images.model.backbone, BackboneConfig::Unet(UnetConfig::tiny()));
}

#[test]
fn a_file_goes_over_the_defaults_and_flags_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.toml");
    std::fs::write(&file, "data = \"uniform:d=1x8x8,g=2\"\nmodel = \"ddm\"\n[train]\nsteps = 7\nlr = 0.01\n").unwrap();
    let from_file = resolved(dir.path(), Some(&file), &Overrides::default()).unwrap();
    // The file's two fields over the image defaults: the batch stays the images' 32.
    assert_eq!(from_file.train, TrainConfig { steps: 7, lr: 0.01, ..TrainConfig::images() });
    assert_eq!(from_file.model.kind, ModelKind::Ddm);
    let flags =
        Overrides { lr: Some(0.002), min_snr: Some(None), preset: Some(UnetPreset::Mnist), ..Overrides::default() };
    let over = resolved(dir.path(), Some(&file), &flags).unwrap();
    assert_eq!(over.train, TrainConfig { steps: 7, lr: 0.002, min_snr: None, ..TrainConfig::images() });
    assert_eq!(over.model.backbone, BackboneConfig::Unet(UnetConfig::mnist()));
}

#[test]
fn a_saved_run_is_the_layer_under_the_flags() {
    let out = tempfile::tempdir().unwrap();
    let flags = Overrides { steps: Some(11), hidden: Some(64), timesteps: Some(20), ..data("gmm2d") };
    let first = resolved(out.path(), None, &flags).unwrap();
    write_atomic(&out.path().join(CONFIG_FILE), serde_json::to_string(&first).unwrap().as_bytes()).unwrap();
    // Resuming repeats no flag; a flag given changes only its own field.
    assert_eq!(resolved(out.path(), None, &Overrides::default()).unwrap(), first);
    let longer = resolved(out.path(), None, &Overrides { steps: Some(30), ..Overrides::default() }).unwrap();
    assert_eq!(longer, RunConfig { train: TrainConfig { steps: 30, ..first.train.clone() }, ..first.clone() });
    // A fine-tuning run starts from the settings of the run it starts from.
    let fresh = tempfile::tempdir().unwrap();
    let init = Overrides { init_from: Some(out.path().to_path_buf()), ..Overrides::default() };
    let tuned = resolved(fresh.path(), None, &init).unwrap();
    assert_eq!(tuned.model, first.model);
    assert_eq!(tuned.train.init_from.as_deref(), Some(out.path()));
}

#[test]
fn what_cannot_be_resolved_is_named() {
    let out = tempfile::tempdir().unwrap();
    let error = |overrides: Overrides| resolved(out.path(), None, &overrides).unwrap_err().to_string();
    assert!(error(Overrides::default()).contains("no training data"));
    assert!(error(Overrides { conditional: true, ..data("gmm2d") }).contains("'gmm2d' has no labels"));
    let mlp_preset = Overrides { backbone: Some(BackboneChoice::Mlp), preset: Some(UnetPreset::Tiny), ..data("gmm2d") };
    assert!(error(mlp_preset).contains("preset applies to the UNet only"));
    assert!(error(Overrides { fourier: Some(vec![0]), ..data("uniform:d=1x8x8,g=2") }).contains("Fourier"));
    assert!(error(Overrides { lr: Some(-1.0), ..data("gmm2d") }).contains("train.lr"));
    let init = Overrides { init_from: Some(out.path().join("none")), ..Overrides::default() };
    assert!(error(init).contains("no trained run there"));
}
