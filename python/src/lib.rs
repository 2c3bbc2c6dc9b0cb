//! `cdm._cdm`: the library's loading, likelihood, denoising, sampling and training behind Python
//! calls, and nothing else (`cdm/__init__.py` checks the torch version before importing it).
//! Torch tensors pass as they are, sharing their storage with libtorch (pyo3-tch); numpy arrays
//! go through `torch.from_numpy` (no copy) and results go back as arrays.
use std::path::{Path, PathBuf};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3_tch::PyTensor;
use tch::{Device, Tensor};

use cdm::checkpoint::{load_model, LoadedModel};
use cdm::config_file::ConfigFile;
use cdm::data::Dataset;
use cdm::device::Request;
use cdm::eval::{denoise, log_likelihood, nll_bits_per_dim, predict_eps, Batches, Estimator};
use cdm::likelihood::{convention_for, Dequantization};
use cdm::run_lock::RunLock;
use cdm::sample::{draw, Conditioning, ParallelOptions, SampleOptions, SamplerKind};
use cdm::train::resolve::{resolve, Overrides};
use cdm::train::{Precision, Trainer};

create_exception!(cdm, CdmError, PyException, "An error of the cdm library; its message is the library's.");

/// The library's error as a [`CdmError`]: `context` first, as the command line puts it, then the
/// error and its causes, joined as `anyhow` prints them (`{:#}`).
fn library_error(context: Option<String>, err: cdm::Error) -> PyErr {
    let mut parts: Vec<String> = context.into_iter().collect();
    let mut source: Option<&dyn std::error::Error> = Some(&err);
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    CdmError::new_err(parts.join(": "))
}

fn lib<T>(result: cdm::Result<T>) -> PyResult<T> {
    result.map_err(|e| library_error(None, e))
}

/// Runs `f` with the GIL released: libtorch's autograd engine, which a CDM's ε̂ and every
/// training step run, refuses to start on a thread that holds it (and other Python threads
/// may run meanwhile).
fn without_gil<T: Send>(py: Python<'_>, f: impl FnOnce() -> T) -> T {
    struct OnThisThread<F>(F);
    // SAFETY: `allow_threads` runs the job on the calling thread, so the unsendable model it
    // borrows never changes threads; the job touches Python objects only under `with_gil`.
    unsafe impl<F> Send for OnThisThread<F> {}
    impl<T, F: FnOnce() -> T> OnThisThread<F> {
        fn run(self) -> T {
            (self.0)()
        }
    }
    let job = OnThisThread(f);
    py.allow_threads(move || job.run())
}

/// A value Python passes as a string, parsed as the library's serde names it (lowercase).
fn named<T: serde::de::DeserializeOwned>(what: &str, value: &str, choices: &str) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(value.into()))
        .map_err(|_| PyValueError::new_err(format!("{what} '{value}': expected {choices}")))
}

/// A tensor argument (detached: nothing here is differentiated for the caller), and whether the
/// caller gave a numpy array (and so gets arrays back).
struct Input {
    x: Tensor,
    numpy: bool,
}

impl Input {
    fn new(py: Python<'_>, x: &Bound<'_, PyAny>) -> PyResult<Self> {
        let torch = py.import("torch")?;
        if x.is_instance(&torch.getattr("Tensor")?)? {
            return Ok(Input { x: x.extract::<PyTensor>()?.0.detach(), numpy: false });
        }
        let is_array = py.import("numpy").and_then(|np| x.is_instance(&np.getattr("ndarray")?)).unwrap_or(false);
        if !is_array {
            let type_ = x.get_type();
            return Err(PyTypeError::new_err(format!("expected a torch.Tensor or a numpy.ndarray, got {type_}")));
        }
        let x = torch.call_method1("from_numpy", (x,))?;
        Ok(Input { x: x.extract::<PyTensor>()?.0, numpy: true })
    }

    /// `y` as the caller's kind of array.
    fn output(&self, py: Python<'_>, y: Tensor) -> PyResult<PyObject> {
        let y = PyTensor(y).into_pyobject(py)?;
        Ok(if self.numpy { y.call_method0("numpy")?.unbind() } else { y.unbind() })
    }
}

/// A JSON value of the library (a run config, a report) as the Python object `json.loads` makes.
fn to_python(py: Python<'_>, value: &impl serde::Serialize) -> PyResult<PyObject> {
    let text = serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

fn device_request(device: &str) -> PyResult<Request> {
    match device {
        "auto" => Ok(Request::Auto),
        "cpu" => Ok(Request::Cpu),
        "cuda" => Ok(Request::Cuda),
        _ => Err(PyValueError::new_err(format!("device '{device}': expected 'auto', 'cpu' or 'cuda'"))),
    }
}

fn choose_device(device: &str) -> PyResult<Device> {
    lib(cdm::device::choose(device_request(device)?).map(|c| c.device))
}

/// A trained model loaded from a run folder (see `cdm.load`).
#[pyclass(unsendable, module = "cdm")]
struct Model {
    loaded: LoadedModel,
    dir: PathBuf,
}

impl Model {
    fn batches(&self, batch: usize) -> Batches<'static> {
        Batches::new(batch, self.loaded.options())
    }
}

#[pymethods]
impl Model {
    /// "cdm" (a classification diffusion model) or "ddm" (its denoising baseline).
    #[getter]
    fn kind(&self) -> String {
        serde_json::to_value(self.loaded.config.model.kind)
            .ok()
            .and_then(|k| k.as_str().map(String::from))
            .unwrap_or_default()
    }

    /// The shape of one data point, e.g. (2,) or (1, 28, 28).
    #[getter]
    fn data_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.loaded.model.data_shape())
    }

    /// T, the number of noisy levels (levels run 0 ..= T).
    #[getter]
    fn timesteps(&self) -> usize {
        self.loaded.model.schedule().timesteps()
    }

    /// Where the weights are, as torch names it ("cpu", "cuda:0").
    #[getter]
    fn device(&self) -> String {
        match self.loaded.vs.device() {
            Device::Cuda(i) => format!("cuda:{i}"),
            Device::Mps => "mps".into(),
            Device::Vulkan => "vulkan".into(),
            Device::Cpu => "cpu".into(),
        }
    }

    /// ᾱ of `level` (0..=T+1): x_t = √ᾱ·x0 + √(1 − ᾱ)·ε.
    fn alpha_bar(&self, level: usize) -> PyResult<f64> {
        let schedule = self.loaded.model.schedule();
        lib(schedule.check_level(level))?;
        Ok(schedule.alpha_bar(level))
    }

    /// Optimiser steps the weights were trained for.
    #[getter]
    fn step(&self) -> u64 {
        self.loaded.step
    }

    /// Classes of a conditional model (0 for an unconditional one).
    #[getter]
    fn num_classes(&self) -> usize {
        self.loaded.model.num_labels()
    }

    /// The run's settings, as in its config.json.
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_python(py, &self.loaded.config)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "cdm.Model('{}', kind='{}', data_shape={}, timesteps={}, step={}, device='{}')",
            self.dir.display(),
            self.kind(),
            self.data_shape(py)?,
            self.timesteps(),
            self.loaded.step,
            self.device()
        ))
    }

    /// log p_level(x) in nats per sample, from one forward pass of a CDM (Theorem 3.2): x is
    /// [N, *data_shape], a torch tensor or a numpy array, and the result [N] float64 on the CPU
    /// the same kind of array; as `cdm nll --out` writes it (level t > 0: x taken as x_t).
    #[pyo3(signature = (x, level=0, batch=1024))]
    fn log_prob(&self, py: Python<'_>, x: &Bound<'_, PyAny>, level: usize, batch: usize) -> PyResult<PyObject> {
        let input = Input::new(py, x)?;
        let batches = self.batches(batch);
        let model = &self.loaded.model;
        let log_p = lib(without_gil(py, || log_likelihood(model, &input.x, Estimator::OnePass(level), &batches, 0)))?;
        input.output(py, log_p)
    }

    /// NLL in bits per dimension, as `cdm nll` reports it: the mean, or with `per_sample` each
    /// point's (the same kind of array as `x`).
    #[pyo3(signature = (x, dequantize=Some("auto"), level=0, seed=12345, batch=1024, per_sample=false))]
    #[allow(clippy::too_many_arguments)]
    fn bits_per_dim(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        dequantize: Option<&str>,
        level: usize,
        seed: u64,
        batch: usize,
        per_sample: bool,
    ) -> PyResult<PyObject> {
        let input = Input::new(py, x)?;
        let (asked, continuous) = match dequantize {
            Some("auto") => (None, false),
            Some("uniform") => (Some(Dequantization::Uniform), false),
            Some("paper") => (Some(Dequantization::Paper), false),
            None => (None, true),
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "dequantize '{other}': expected 'auto', 'uniform', 'paper' or None"
                )))
            }
        };
        let convention = convention_for(&input.x, level, asked, continuous)
            .map_err(|e| library_error(Some("dequantize".into()), e))?;
        let batches = self.batches(batch);
        let model = &self.loaded.model;
        let bpd = lib(without_gil(py, || {
            nll_bits_per_dim(model, &input.x, Estimator::OnePass(level), convention, &batches, seed)
        }))?;
        match per_sample {
            true => input.output(py, bpd),
            false => Ok(bpd.mean(tch::Kind::Double).double_value(&[]).into_pyobject(py)?.into_any().unbind()),
        }
    }

    /// The MMSE denoiser E[x0 | x_t] at `level` (1..=T), as `cdm denoise` writes it; for a CDM
    /// from the classifier's input gradient (Theorem 3.1). Same kind of array out as in.
    #[pyo3(signature = (x_t, level, batch=1024))]
    fn denoise(&self, py: Python<'_>, x_t: &Bound<'_, PyAny>, level: usize, batch: usize) -> PyResult<PyObject> {
        let input = Input::new(py, x_t)?;
        let (model, batches) = (&self.loaded.model, self.batches(batch));
        let x0 = lib(without_gil(py, || denoise(model, &input.x, level, None, &batches)))?;
        input.output(py, x0)
    }

    /// The predicted noise ε̂(x_t, level) at `level` (1..=T), unconditional. Same kind of array
    /// out as in.
    #[pyo3(signature = (x_t, level, batch=1024))]
    fn eps(&self, py: Python<'_>, x_t: &Bound<'_, PyAny>, level: usize, batch: usize) -> PyResult<PyObject> {
        let input = Input::new(py, x_t)?;
        let (model, batches) = (&self.loaded.model, self.batches(batch));
        let eps = lib(without_gil(py, || predict_eps(model, &input.x, level, &batches)))?;
        input.output(py, eps)
    }

    /// `n` samples and what drawing them cost, as `cdm sample` draws them with the same options
    /// and seed: `sampler` ddpm, ddim, dpm2 or dpmpp2m; `parallel=P` refines windows of P steps
    /// by fixed-point iteration to tolerance `tol`; `class_`, `guidance` and `unconditional` for
    /// conditional models; `clip_x0` clips each step's x̂0; `cuda_graphs` replays the network
    /// calls from CUDA graphs on a CUDA device.
    #[pyo3(signature = (
        n, sampler="ddim", steps=50, parallel=None, tol=0.1, guidance=0.0, class_=None, seed=0,
        eta=0.0, clip_x0=None, unconditional=false, batch=1024, cuda_graphs=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &self,
        py: Python<'_>,
        n: usize,
        sampler: &str,
        steps: usize,
        parallel: Option<usize>,
        tol: f64,
        guidance: f64,
        class_: Option<i64>,
        seed: u64,
        eta: f64,
        clip_x0: Option<f64>,
        unconditional: bool,
        batch: usize,
        cuda_graphs: bool,
    ) -> PyResult<Samples> {
        let sampler: SamplerKind = named("sampler", sampler, "'ddpm', 'ddim', 'dpm2' or 'dpmpp2m'")?;
        let conditioning = match (unconditional, class_) {
            (true, Some(_)) => return Err(PyValueError::new_err("unconditional=True draws no class: drop class_")),
            (true, None) => Conditioning::Unconditional,
            (false, Some(c)) => Conditioning::Class(c),
            (false, None) => Conditioning::Classes,
        };
        let parallel = parallel.map(|window| ParallelOptions { window, tol, ..ParallelOptions::default() });
        let opts = SampleOptions { sampler, steps, eta, seed, conditioning, guidance, clip_x0, parallel };
        lib(cdm::data::check_held("n", n, self.loaded.model.data_shape()))?;
        let (model, batches) = (&self.loaded.model, Batches { graphs: cuda_graphs, ..self.batches(batch) });
        let drawn = lib(without_gil(py, || draw(model, n, &opts, &batches)))?;
        Ok(Samples {
            x: PyTensor(drawn.x).into_pyobject(py)?.unbind(),
            labels: drawn.labels,
            cost: to_python(py, &drawn.stats)?,
        })
    }
}

/// Samples drawn by `Model.sample`.
#[pyclass(module = "cdm", get_all, frozen)]
struct Samples {
    /// The samples, a torch tensor [n, *data_shape] on the CPU.
    x: PyObject,
    /// For a conditional model, each sample's class; else None.
    labels: Option<Vec<i64>>,
    /// What drawing them cost: steps, batches, iterations, evaluations, largest_batch, seconds.
    cost: PyObject,
}

#[pymethods]
impl Samples {
    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("cdm.Samples(x={}, cost={})", self.x.bind(py).getattr("shape")?, self.cost.bind(py)))
    }
}

/// Loads the trained model in the run folder `path` (written by `cdm train`): the EMA weights
/// unless `ema=False`, on `device` ("auto", "cpu", "cuda"), optionally computing in another
/// `precision` ("f32", "f64", "bf16").
#[pyfunction]
#[pyo3(signature = (path, device="auto", ema=true, precision=None))]
fn load(path: PathBuf, device: &str, ema: bool, precision: Option<&str>) -> PyResult<Model> {
    let precision: Option<Precision> =
        precision.map(|p| named("precision", p, "'f32', 'f64' or 'bf16'")).transpose()?;
    let device = choose_device(device)?;
    let mut loaded = load_model(&path, device, ema)
        .map_err(|e| library_error(Some(format!("loading checkpoint {}", path.display())), e))?;
    if let Some(precision) = precision {
        loaded.set_precision(precision);
    }
    Ok(Model { loaded, dir: path })
}

/// The config file `cdm.train` was given: a dict in the `--config` file's format, or the path
/// of such a file; none resumes the run already in `out`.
fn config_file(py: Python<'_>, config: Option<&Bound<'_, PyAny>>) -> PyResult<Option<ConfigFile>> {
    let Some(config) = config else { return Ok(None) };
    if config.is_instance_of::<PyDict>() {
        let text: String = py.import("json")?.call_method1("dumps", (config,))?.extract()?;
        return lib(ConfigFile::parse(&text, Path::new("<config dict>.json"))).map(Some);
    }
    lib(ConfigFile::read(&config.extract::<PathBuf>()?)).map(Some)
}

/// Trains the run in `out` (or resumes it), as `cdm train --config` does; returns the step
/// reached. `config`: a dict or the path of a TOML/JSON file in the `--config` format (data,
/// model, schedule, backbone, train, ...), over the defaults that suit the data; None resumes
/// the run in `out`. `progress(report)` is called at each logged step; an exception in it, or
/// Ctrl-C, stops training after the next step with a checkpoint, and is raised. `cuda_graphs`
/// replays each step's loss and backward pass from a CUDA graph on a CUDA device.
#[pyfunction]
#[pyo3(signature = (config=None, *, out, progress=None, device="auto", restart=false, cuda_graphs=false))]
fn train(
    py: Python<'_>,
    config: Option<&Bound<'_, PyAny>>,
    out: PathBuf,
    progress: Option<&Bound<'_, PyAny>>,
    device: &str,
    restart: bool,
    cuda_graphs: bool,
) -> PyResult<u64> {
    let device = choose_device(device)?;
    let in_out = |e| library_error(Some(format!("out {}", out.display())), e);
    // The lock first, as the command line takes it: the saved run read next is this process's.
    let lock = RunLock::acquire(&out).map_err(in_out)?;
    if restart {
        lock.discard_run().map_err(in_out)?;
    }
    let file = config_file(py, config)?;
    let open = |data: &str| Dataset::open(data).map_err(|e| e.within(format!("data {data}")));
    let (run, dataset) = lib(resolve(&out, file.as_ref(), &Overrides::default(), open))?;
    let progress: Option<Py<PyAny>> = progress.map(|p| p.clone().unbind());
    // An exception in `progress`, or Ctrl-C (noticed at a report), stops training as SIGINT
    // stops the command line, after the next step with a checkpoint of it; then it is raised.
    let mut raised: Option<PyErr> = None;
    cdm::signals::set_received(None);
    let trained = without_gil(py, || {
        let mut trainer = Trainer::open_with_data(lock, run, dataset, device)?;
        trainer.set_cuda_graphs(cuda_graphs);
        let total = trainer.config.train.steps;
        trainer.run(&mut |report| {
            if raised.is_some() {
                return;
            }
            let called = Python::with_gil(|py| {
                py.check_signals()?;
                let Some(progress) = &progress else { return Ok(()) };
                let report = to_python(py, report)?;
                report.bind(py).set_item("total_steps", total)?;
                progress.call1(py, (report,)).map(|_| ())
            });
            if let Err(err) = called {
                cdm::signals::set_received(Some(libc::SIGINT));
                raised = Some(err);
            }
        })?;
        Ok(trainer.step())
    });
    cdm::signals::set_received(None);
    let step = lib(trained)?;
    match raised {
        Some(err) => Err(err),
        None => Ok(step),
    }
}

#[pymodule]
fn _cdm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CdmError", m.py().get_type::<CdmError>())?;
    m.add_class::<Model>()?;
    m.add_class::<Samples>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    Ok(())
}
