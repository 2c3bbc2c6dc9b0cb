//! CUDA graphs: the kernels of one network call recorded once, then launched again with one call.
//! A small model's sampling step is bound by the host launching its kernels one by one (the tiny
//! UNet keeps an H200 mostly idle: docs/results.md §12), and a parallel sampler's iteration is
//! that call plus a few operations; a replay launches all of the call's kernels at once.
//! libtorch's `at::cuda::CUDAGraph` records them, through `csrc/cuda_graph.cpp` in the CUDA
//! extension library ([`crate::device::EXTENSION_LIBRARY`]).
use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use crate::device::{extension_symbol, take_message};
use crate::model::Model;
use crate::predictor::LabelledPredictor;
use crate::{Error, Result};

type Begin = unsafe extern "C" fn(c_int, *mut *mut c_char) -> *mut c_void;
/// `cdm_graph_end` and `cdm_graph_replay`: null, or an error message.
type Act = unsafe extern "C" fn(*mut c_void) -> *mut c_char;
type Free = unsafe extern "C" fn(*mut c_void);

/// The shim's four functions.
struct Api {
    begin: Begin,
    end: Act,
    replay: Act,
    free: Free,
}

/// The shim, loaded once per process, or why it cannot be.
fn api() -> std::result::Result<&'static Api, String> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    let load = || -> std::result::Result<Api, String> {
        // SAFETY: the addresses of csrc/cuda_graph.cpp's functions, whose C signatures the
        // fields of Api spell out.
        unsafe {
            Ok(Api {
                begin: std::mem::transmute::<*mut c_void, Begin>(extension_symbol(c"cdm_graph_begin")?),
                end: std::mem::transmute::<*mut c_void, Act>(extension_symbol(c"cdm_graph_end")?),
                replay: std::mem::transmute::<*mut c_void, Act>(extension_symbol(c"cdm_graph_replay")?),
                free: std::mem::transmute::<*mut c_void, Free>(extension_symbol(c"cdm_graph_free")?),
            })
        }
    };
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn torch_error(what: &str, why: String) -> Error {
    Error::Torch(tch::TchError::Torch(format!("{what}: {why}")))
}

/// A recorded CUDA graph.
pub struct Graph {
    raw: NonNull<c_void>,
    device: Device,
    api: &'static Api,
    replayed: Cell<bool>,
}

impl Graph {
    /// Records the kernels that `work` queues on CUDA device `device`, and `work`'s result. The
    /// tensors `work` makes live in the graph's own memory: nothing is computed until
    /// [`Graph::replay`], and every replay rewrites them. Fails, and records nothing, when `work`
    /// does what a graph cannot hold (reads a value back to the host, waits for the device).
    pub fn capture<T>(device: Device, work: impl FnOnce() -> Result<T>) -> Result<(Graph, T)> {
        let Device::Cuda(index) = device else {
            return Err(Error::Config(format!("CUDA graphs need a CUDA device, not {device:?}")));
        };
        let api = api().map_err(Error::CudaUnavailable)?;
        let mut error = std::ptr::null_mut();
        // SAFETY: a device index and an out-parameter the shim sets when it returns null.
        let raw = unsafe { (api.begin)(index as c_int, &mut error) };
        let Some(raw) = NonNull::new(raw) else {
            return Err(torch_error("starting a CUDA graph capture", take_message(error).unwrap_or_default()));
        };
        let graph = Graph { raw, device, api, replayed: Cell::new(false) };
        // tch panics on most libtorch errors, and an operation a capture cannot hold raises one:
        // caught, so that the capture is ended and the caller can go on without a graph.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|panic| {
            let why =
                panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(torch_error("a libtorch call failed", why.unwrap_or_default()))
        });
        // SAFETY: the capture begun above; the shim ends it whatever `work` did.
        let ended = take_message(unsafe { (api.end)(raw.as_ptr()) });
        match (result, ended) {
            (Ok(value), None) => Ok((graph, value)),
            (Err(cause), _) => Err(cause.within("capturing a CUDA graph")),
            (Ok(_), Some(why)) => Err(torch_error("capturing a CUDA graph", why)),
        }
    }

    /// Queues the recorded kernels on the current stream.
    pub fn replay(&self) -> Result<()> {
        self.replayed.set(true);
        // SAFETY: a graph whose capture ended well (`capture` returns no other).
        match take_message(unsafe { (self.api.replay)(self.raw.as_ptr()) }) {
            None => Ok(()),
            Some(why) => Err(torch_error("replaying a CUDA graph", why)),
        }
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.replayed.get() {
            // Its memory is freed with it: the replays queued must have run.
            crate::device::synchronize(self.device);
        }
        // SAFETY: made by cdm_graph_begin, freed once.
        unsafe { (self.api.free)(self.raw.as_ptr()) }
    }
}

/// Calls of this many input shapes at most are kept as graphs (each holds its own memory).
const MAX_GRAPHS: usize = 8;

/// Calls of a shape that run as they are before it is captured: they make what libtorch makes
/// lazily (cuBLAS and cuDNN handles and plans) and fill the model's cached tables, which a
/// capture must find made.
pub const EAGER_CALLS: usize = 2;

/// What identifies a call's graph: the inputs' shapes and kinds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CallShape {
    x: Vec<i64>,
    x_kind: Kind,
    t_kind: Kind,
    labelled: bool,
}

enum Call {
    /// Calls of this shape run so far, all as they are.
    Eager(usize),
    /// The captured call: its inputs, which a replay reads, and its output, which it writes.
    Captured { graph: Graph, x: Tensor, t: Tensor, labels: Option<Tensor>, eps: Tensor },
}

/// A model's ε̂ on a CUDA device, replayed from CUDA graphs: per input shape, the first
/// [`EAGER_CALLS`] calls run as they are, the next is captured, and later ones copy their inputs
/// into the captured call's and replay it. A shape seen once or twice (a parallel sampler's
/// narrowing last windows) never pays for a capture. If a capture fails, the reason is logged
/// once and every call runs as it is; on the CPU every call does.
///
/// A graph holds the model's weights by address: it sees weights changed in place, but not
/// weights replaced, so the model must not be reloaded while this lives (it borrows it).
pub struct GraphedModel<'a> {
    model: &'a Model,
    device: Device,
    calls: RefCell<HashMap<CallShape, Call>>,
    off: Cell<bool>,
}

impl<'a> GraphedModel<'a> {
    /// `model`, whose weights are on `device`.
    pub fn new(model: &'a Model, device: Device) -> Self {
        GraphedModel { model, device, calls: RefCell::default(), off: Cell::new(!device.is_cuda()) }
    }

    /// Input shapes whose calls are replayed from graphs.
    pub fn graphs(&self) -> usize {
        self.calls.borrow().values().filter(|c| matches!(c, Call::Captured { .. })).count()
    }

    fn capture(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Call> {
        let on_device = |v: &Tensor| v.to_device(self.device).copy();
        let (x, t, labels) = (on_device(x), on_device(t), labels.map(on_device));
        let (graph, eps) = Graph::capture(self.device, || self.model.eps(&x, &t, labels.as_ref()))?;
        Ok(Call::Captured { graph, x, t, labels, eps })
    }
}

impl LabelledPredictor for GraphedModel<'_> {
    fn eps_given(&self, x_t: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        if self.off.get() {
            return self.model.eps(x_t, t, labels);
        }
        let shape = CallShape { x: x_t.size(), x_kind: x_t.kind(), t_kind: t.kind(), labelled: labels.is_some() };
        let mut calls = self.calls.borrow_mut();
        let full = calls.len() >= MAX_GRAPHS;
        let call = match calls.entry(shape) {
            Entry::Occupied(seen) => seen.into_mut(),
            Entry::Vacant(_) if full => return self.model.eps(x_t, t, labels),
            Entry::Vacant(new) => new.insert(Call::Eager(0)),
        };
        if let Call::Eager(runs) = call {
            if *runs < EAGER_CALLS {
                *runs += 1;
                return self.model.eps(x_t, t, labels);
            }
            match self.capture(x_t, t, labels) {
                Ok(captured) => *call = captured,
                Err(why) => {
                    tracing::warn!("network calls run without CUDA graphs: {why}");
                    self.off.set(true);
                    calls.clear();
                    return self.model.eps(x_t, t, labels);
                }
            }
        }
        let Call::Captured { graph, x, t: levels, labels: captured_labels, eps } = call else {
            unreachable!("captured above")
        };
        x.shallow_clone().f_copy_(x_t)?;
        levels.shallow_clone().f_copy_(t)?;
        if let (Some(into), Some(from)) = (captured_labels, labels) {
            into.shallow_clone().f_copy_(from)?;
        }
        graph.replay()?;
        Ok(eps.copy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ModelKind};
    use crate::nets::{BackboneConfig, MlpConfig};
    use crate::schedule::{ScheduleConfig, ScheduleKind};

    #[test]
    fn a_capture_off_cuda_is_refused_by_name() {
        let err = Graph::capture(Device::Cpu, || Ok(())).err().expect("no graphs on the CPU");
        assert!(err.to_string().contains("CUDA graphs need a CUDA device"), "{err}");
    }

    #[test]
    fn on_the_cpu_every_call_runs_as_it_is() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let config = ModelConfig {
            kind: ModelKind::Cdm,
            schedule: ScheduleConfig::new(ScheduleKind::Linear, 10),
            backbone: BackboneConfig::Mlp(MlpConfig::default()),
            data_shape: vec![2],
            gaussian_base: false,
            base_per_class: false,
        };
        let model = Model::new(&vs.root(), &config).unwrap();
        let graphed = GraphedModel::new(&model, Device::Cpu);
        let (x, t) = (Tensor::randn([3, 2], (Kind::Float, Device::Cpu)), Tensor::from_slice(&[1i64, 5, 9]));
        for _ in 0..=EAGER_CALLS + 1 {
            let plain = model.eps(&x, &t, None).unwrap();
            assert!(graphed.eps_given(&x, &t, None).unwrap().equal(&plain));
        }
        assert_eq!(graphed.graphs(), 0);
    }
}
