//! Data parallelism on PyTorch's own collective engine, c10d: the `TCPStore` rendezvous and the
//! process groups that PyTorch's DistributedDataParallel uses, Gloo on CPU hosts and NCCL on
//! GPUs, reached through `csrc/distributed.cpp` and, for NCCL, `csrc/nccl.cpp` (tch binds none of
//! c10d).
//!
//! A job is `world_size` ranks, each a process. They meet at `MASTER_ADDR:MASTER_PORT`, where
//! rank 0 serves the store: the variables torchrun and cluster schedulers set ([`Launch`]), or
//! that [`spawn_local`] sets for ranks on this host. Each rank trains on its [`Shard`] of the
//! global batch; the gradients are summed over ranks, so every rank takes the same step.
use std::ffi::{c_char, c_int, c_void, CString};
use std::ops::Range;
use std::process::{Child, Command};
use std::ptr::NonNull;
use std::time::Duration;

use tch::{Device, Kind, Tensor};

use crate::device::take_message;
use crate::{Error, Result};

/// How long a collective (or the rendezvous) waits for a rank that does not come: one that has
/// died is noticed at once (its connections close); this bounds one that hangs. PyTorch's own
/// default for Gloo.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Where this process sits in a job, from a launcher's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world_size: usize,
    /// The rank among those on this host: its GPU, where there are GPUs.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// The job this process belongs to, as `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR` and
    /// `MASTER_PORT` describe it (torchrun's variables); `None` when `WORLD_SIZE` is unset.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Launch::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let Some(world) = var("WORLD_SIZE") else { return Ok(None) };
        let number = |name: &str, value: Option<String>, below: Option<usize>| -> Result<usize> {
            let value = value.ok_or_else(|| launch_error(name, "is unset", "WORLD_SIZE is set"))?;
            match (value.trim().parse::<usize>(), below) {
                (Ok(n), Some(limit)) if n < limit => Ok(n),
                (Ok(n), None) if n > 0 => Ok(n),
                _ => Err(launch_error(
                    name,
                    &format!("is '{value}'"),
                    &match below {
                        Some(limit) => format!("an integer in 0..{limit}"),
                        None => "a positive integer".into(),
                    },
                )),
            }
        };
        let world_size = number("WORLD_SIZE", Some(world), None)?;
        let rank = number("RANK", var("RANK"), Some(world_size))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v), Some(world_size))?,
            None => rank,
        };
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT").ok_or_else(|| launch_error("MASTER_PORT", "is unset", "WORLD_SIZE is set"))?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| launch_error("MASTER_PORT", &format!("is '{port}'"), "a port number in 1..=65535"))?;
        Ok(Some(Launch { rank, world_size, local_rank, master_addr, master_port }))
    }

    /// The device of this rank: `cuda:LOCAL_RANK` when `device` is a GPU, else `device`.
    pub fn device(&self, device: Device) -> Device {
        match device {
            Device::Cuda(_) => Device::Cuda(self.local_rank),
            other => other,
        }
    }
}

fn launch_error(name: &str, what: &str, expected: &str) -> Error {
    Error::Config(format!("launcher environment: {name} {what}; expected {expected}"))
}

/// The part of a global batch of `total` examples that one rank computes: examples
/// `start..start + len`. Everything random about example i (its level, its noise) is drawn the
/// same whichever rank holds it, so a step's result does not depend on the number of ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub start: usize,
    pub len: usize,
    pub total: usize,
}

impl Shard {
    /// The whole batch, in one process.
    pub fn whole(total: usize) -> Self {
        Shard { start: 0, len: total, total }
    }

    /// Rank `rank`'s even share of `total` examples over `world_size` ranks.
    pub fn of(total: usize, rank: usize, world_size: usize) -> Result<Self> {
        if world_size == 0 || !total.is_multiple_of(world_size) || rank >= world_size {
            return Err(Error::Config(format!(
                "a batch of {total} does not split evenly over {world_size} ranks; choose a batch size divisible by {world_size}"
            )));
        }
        let len = total / world_size;
        Ok(Shard { start: rank * len, len, total })
    }

    /// Rank `rank`'s share of a set of `total` points passed through a model `chunk` at a time:
    /// a contiguous run of whole chunks, as even as whole chunks allow (empty for a rank past
    /// the last chunk). The set is chunked as it is in one process, so what a chunk draws is
    /// the same.
    pub fn chunks(total: usize, chunk: usize, rank: usize, world_size: usize) -> Self {
        let (chunk, world_size) = (chunk.max(1), world_size.max(1));
        let count = total.div_ceil(chunk);
        let at = |r: usize| (count * r / world_size * chunk).min(total);
        let (start, end) = (at(rank), at(rank + 1));
        Shard { start, len: end - start, total }
    }

    /// The examples this shard holds.
    pub fn range(&self) -> Range<usize> {
        self.start..self.start + self.len
    }

    /// This shard's rows of a tensor of the whole batch ([total, ..]).
    pub fn rows(&self, whole: &Tensor) -> Tensor {
        whole.narrow(0, self.start as i64, self.len as i64)
    }
}

/// Which of c10d's backends runs a job's collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo, on CPU tensors: a GPU's tensors go through host copies.
    Gloo,
    /// NCCL, on this rank's GPU, from [`crate::device::EXTENSION_LIBRARY`].
    Nccl,
}

/// `cdm_nccl_backend` of `csrc/nccl.cpp`.
type BackendFactory = unsafe extern "C" fn(*mut c_void, c_int, c_int, c_int, i64, *mut *mut c_char) -> *mut c_void;

impl Backend {
    /// NCCL for ranks on CUDA devices where its library loads, Gloo otherwise (saying why on
    /// stderr when a GPU rank falls back); `CDM_DIST_BACKEND=gloo` or `nccl` insists on one.
    pub fn for_device(device: Device) -> Result<Backend> {
        let forced = std::env::var("CDM_DIST_BACKEND").ok();
        match (forced.as_deref(), device) {
            (Some("gloo"), _) => Ok(Backend::Gloo),
            (Some("nccl"), Device::Cuda(_)) => nccl_factory().map(|_| Backend::Nccl).map_err(Error::Config),
            (Some("nccl"), _) => {
                Err(Error::Config("CDM_DIST_BACKEND=nccl needs ranks on CUDA devices (--device cuda)".into()))
            }
            (Some(other), _) => Err(Error::Config(format!(
                "CDM_DIST_BACKEND is '{other}'; expected gloo or nccl (or unset: NCCL on GPUs, else Gloo)"
            ))),
            (None, Device::Cuda(_)) => Ok(match nccl_factory() {
                Ok(_) => Backend::Nccl,
                Err(why) => {
                    tracing::warn!("collectives on Gloo through host copies: {why}");
                    Backend::Gloo
                }
            }),
            (None, _) => Ok(Backend::Gloo),
        }
    }
}

/// `cdm_nccl_backend` of the CUDA extension library, loaded once per process, or why not.
fn nccl_factory() -> std::result::Result<BackendFactory, String> {
    static LOADED: std::sync::OnceLock<std::result::Result<usize, String>> = std::sync::OnceLock::new();
    let address =
        LOADED.get_or_init(|| crate::device::extension_symbol(c"cdm_nccl_backend").map(|symbol| symbol as usize));
    // SAFETY: the address of cdm_nccl_backend, whose C signature BackendFactory spells out.
    address.clone().map(|a| unsafe { std::mem::transmute::<usize, BackendFactory>(a) })
}

extern "C" {
    fn cdm_dist_new(
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        make_backend: Option<BackendFactory>,
        device: c_int,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn cdm_dist_all_reduce_sum(group: *mut c_void, tensor: *mut c_void) -> *mut c_char;
    fn cdm_dist_broadcast(group: *mut c_void, tensor: *mut c_void, root: c_int) -> *mut c_char;
    fn cdm_dist_barrier(group: *mut c_void) -> *mut c_char;
    fn cdm_dist_free(group: *mut c_void);
}

/// This rank's membership of a job: a c10d process group.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world_size: usize,
    /// Where the backend's collectives take their tensors: the CPU for Gloo, the rank's GPU for
    /// NCCL (which is how [`ProcessGroup::backend`] tells them apart).
    device: Device,
}

impl ProcessGroup {
    /// Joins the job `launch` describes, for a rank computing on `device` (its backend from
    /// [`Backend::for_device`]); waits up to `timeout` for every rank to arrive, and each later
    /// collective as long for every rank to take part.
    pub fn join(launch: &Launch, device: Device, timeout: Duration) -> Result<Self> {
        let backend = Backend::for_device(device)?;
        let addr = CString::new(launch.master_addr.as_str())
            .map_err(|_| launch_error("MASTER_ADDR", "holds a NUL byte", "a host name"))?;
        let (make_backend, device) = match (backend, device) {
            (Backend::Nccl, Device::Cuda(index)) => (Some(nccl_factory().map_err(Error::Config)?), Device::Cuda(index)),
            _ => (None, Device::Cpu),
        };
        let index = match device {
            Device::Cuda(index) => index as c_int,
            _ => -1,
        };
        let mut error = std::ptr::null_mut();
        // SAFETY: the strings outlive the call; the shim returns a group or sets `error`.
        let raw = unsafe {
            cdm_dist_new(
                addr.as_ptr(),
                launch.master_port as c_int,
                launch.rank as c_int,
                launch.world_size as c_int,
                timeout.as_millis().min(i64::MAX as u128) as i64,
                make_backend,
                index,
                &mut error,
            )
        };
        let rank = launch.rank;
        match NonNull::new(raw) {
            Some(raw) => Ok(ProcessGroup { raw, rank, world_size: launch.world_size, device }),
            None => Err(Error::Distributed {
                rank,
                what: format!(
                    "could not join the job at {}:{} over {backend:?} ({})",
                    launch.master_addr,
                    launch.master_port,
                    take_message(error).unwrap_or_default()
                ),
            }),
        }
    }

    /// The backend the collectives run on.
    pub fn backend(&self) -> Backend {
        match self.device {
            Device::Cpu => Backend::Gloo,
            _ => Backend::Nccl,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The error of a failed collective: a rank that died or hung is the likely cause.
    fn check(&self, what: &str, message: *mut c_char) -> Result<()> {
        match take_message(message) {
            None => Ok(()),
            Some(message) => Err(Error::Distributed {
                rank: self.rank,
                what: format!("{what} failed, so another rank has stopped or timed out: {message}"),
            }),
        }
    }

    /// Sums `tensor` (contiguous) over the ranks, in place; every rank gets the same values.
    pub fn all_reduce_sum(&self, tensor: &Tensor) -> Result<()> {
        self.in_place(tensor, "an all-reduce", |raw, handle| {
            // SAFETY: the handle is a live tensor for the call's duration.
            unsafe { cdm_dist_all_reduce_sum(raw, handle) }
        })
    }

    /// Copies rank `root`'s `tensor` (contiguous) into every rank's, in place.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        self.in_place(tensor, "a broadcast", |raw, handle| {
            // SAFETY: as in all_reduce_sum.
            unsafe { cdm_dist_broadcast(raw, handle, root as c_int) }
        })
    }

    /// Runs a collective on `tensor` in place. A tensor on another device than the backend's
    /// (a GPU's under Gloo, the CPU's under NCCL) goes through a copy on the backend's.
    fn in_place(
        &self,
        tensor: &Tensor,
        what: &str,
        collective: impl Fn(*mut c_void, *mut c_void) -> *mut c_char,
    ) -> Result<()> {
        let elsewhere = tensor.device() != self.device;
        let mut handle = match elsewhere {
            false => tensor.shallow_clone(),
            true => tensor.to_device(self.device),
        };
        let message = collective(self.raw.as_ptr(), handle.as_mut_ptr().cast());
        self.check(what, message)?;
        if elsewhere {
            tch::no_grad(|| tensor.shallow_clone().copy_(&handle));
        }
        Ok(())
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is live.
        let message = unsafe { cdm_dist_barrier(self.raw.as_ptr()) };
        self.check("a barrier", message)
    }

    /// Whether `flag` holds on any rank (all ranks get the same answer).
    pub fn any(&self, flag: bool) -> Result<bool> {
        let count = Tensor::from_slice(&[flag as i64]);
        self.all_reduce_sum(&count)?;
        Ok(count.int64_value(&[0]) > 0)
    }

    /// The rows of one [total, ..] tensor that the ranks computed in shares, put together on
    /// every rank: `whole` (zeros of the full shape, in the kind and on the device wanted) with
    /// this rank's `part` (the rows of its `shard`; nothing for an empty shard) in place, summed
    /// over the ranks. If any rank's part failed, every rank fails: with its own error, or a
    /// named one where its part was fine.
    pub fn gather_rows(&self, shard: Shard, part: Result<Option<Tensor>>, whole: Tensor) -> Result<Tensor> {
        if self.any(part.is_err())? {
            let elsewhere = || Error::Distributed { rank: self.rank, what: "another rank failed".into() };
            return Err(part.err().unwrap_or_else(elsewhere));
        }
        if let Ok(Some(part)) = part {
            shard.rows(&whole).copy_(&part);
        }
        self.all_reduce_sum(&whole)?;
        Ok(whole)
    }

    /// Rank 0's `bytes` on every rank (the others pass `None`).
    pub fn broadcast_bytes(&self, bytes: Option<&[u8]>) -> Result<Vec<u8>> {
        let len = Tensor::from_slice(&[bytes.map_or(0, |b| b.len() as i64)]);
        self.broadcast(&len, 0)?;
        let len = len.int64_value(&[0]);
        let buffer = match bytes {
            Some(b) => Tensor::from_slice(b),
            None => Tensor::zeros([len], (Kind::Uint8, Device::Cpu)),
        };
        self.broadcast(&buffer, 0)?;
        Ok(Vec::<u8>::try_from(&buffer)?)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by cdm_dist_new, freed once.
        unsafe { cdm_dist_free(self.raw.as_ptr()) }
    }
}

// SAFETY: c10d's process groups are used from any thread in PyTorch; this one is only ever
// used by one thread at a time (`&self` calls wait for their collective).
unsafe impl Send for ProcessGroup {}

/// Runs `program` with `args` as `nproc` ranks on this host (the launcher environment set for
/// each, a free local port, and the CPU threads split among them unless `OMP_NUM_THREADS` is
/// set) and waits for all of them. When one fails, the others are given `grace` to stop on
/// their own (their next collective fails at once), then killed; the error names the first
/// rank that failed and how.
pub fn spawn_local(program: &std::path::Path, args: &[String], nproc: usize, grace: Duration) -> Result<()> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map_err(|e| Error::io("127.0.0.1:0", e))?
        .port();
    let threads = std::thread::available_parallelism().map_or(1, |n| (n.get() / nproc).max(1));
    let mut children: Vec<Child> = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("LOCAL_WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            command.env("OMP_NUM_THREADS", threads.to_string());
        }
        match command.spawn() {
            Ok(child) => children.push(child),
            Err(e) => {
                kill_all(&mut children);
                return Err(Error::io(program, e));
            }
        }
    }
    let mut failed: Option<(usize, std::process::ExitStatus)> = None;
    let mut deadline = None;
    loop {
        let mut running = 0;
        for (rank, child) in children.iter_mut().enumerate() {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() && failed.is_none() => {
                    failed = Some((rank, status));
                    deadline = Some(std::time::Instant::now() + grace);
                }
                Ok(Some(_)) => {}
                _ => running += 1,
            }
        }
        if running == 0 {
            break;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() > d) {
            kill_all(&mut children);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match failed {
        None => Ok(()),
        Some((rank, status)) => {
            Err(Error::Distributed { rank, what: format!("exited with {status}; the other ranks were stopped") })
        }
    }
}

fn kill_all(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn launch_reads_torchrun_variables() {
        let env = [
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ];
        let launch = Launch::from_vars(vars(&env)).unwrap().unwrap();
        assert_eq!(
            launch,
            Launch { rank: 3, world_size: 4, local_rank: 1, master_addr: "node0".into(), master_port: 29500 }
        );
        assert_eq!(launch.device(Device::Cuda(0)), Device::Cuda(1));
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
    }

    #[test]
    fn launch_names_the_bad_variable() {
        let cases: [&[(&str, &str)]; 3] = [
            &[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")],
            &[("WORLD_SIZE", "0"), ("RANK", "0"), ("MASTER_PORT", "1")],
            &[("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "x")],
        ];
        for (env, name) in cases.iter().zip(["RANK", "WORLD_SIZE", "MASTER_PORT"]) {
            let error = Launch::from_vars(vars(env)).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains("expected"), "{error}");
        }
    }

    #[test]
    fn shards_tile_the_batch() {
        let shards: Vec<_> = (0..4).map(|r| Shard::of(32, r, 4).unwrap()).collect();
        assert_eq!(shards.iter().map(|s| s.range()).collect::<Vec<_>>(), [0..8, 8..16, 16..24, 24..32]);
        assert!(Shard::of(30, 0, 4).unwrap_err().to_string().contains("divisible by 4"));
        assert_eq!(Shard::whole(5).range(), 0..5);
    }
}
