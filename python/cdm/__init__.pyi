"""Type stubs of `cdm`: classification diffusion models from Python."""

import os
from typing import Any, Callable, Literal, Mapping, Optional, Tuple, TypeVar, Union

import numpy
import torch

TORCH_VERSION: str

Array = TypeVar("Array", torch.Tensor, numpy.ndarray)
"""A batch of points [N, *data_shape]: a torch tensor or a numpy array; results come back as the same kind."""

class CdmError(Exception):
    """An error of the cdm library (a bad path, a wrong shape, a bad setting); the message is the library's."""

class Samples:
    x: torch.Tensor
    """The samples, [n, *data_shape], on the CPU."""
    labels: Optional[list[int]]
    """For a conditional model, each sample's class; else None."""
    cost: dict[str, Any]
    """What drawing them cost: steps, batches, iterations, evaluations, largest_batch, seconds."""

class Model:
    """A trained model loaded from a run folder by `cdm.load`."""

    @property
    def kind(self) -> Literal["cdm", "ddm"]:
        """"cdm" (a classification diffusion model) or "ddm" (its denoising baseline)."""
    @property
    def data_shape(self) -> Tuple[int, ...]:
        """The shape of one data point, e.g. (2,) or (1, 28, 28)."""
    @property
    def timesteps(self) -> int:
        """T, the number of noisy levels (levels run 0..=T)."""
    @property
    def device(self) -> str:
        """Where the weights are: "cpu" or "cuda:0"."""
    def alpha_bar(self, level: int) -> float:
        """The schedule's alpha-bar at `level` (0..=T+1): x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps."""
    @property
    def step(self) -> int:
        """Optimiser steps the weights were trained for."""
    @property
    def num_classes(self) -> int:
        """Classes of a conditional model, 0 for an unconditional one."""
    @property
    def config(self) -> dict[str, Any]:
        """The run's settings, as in its config.json."""
    def log_prob(self, x: Array, level: int = 0, batch: int = 1024) -> Array:
        """log p_level(x) in nats per sample ([N], float64, on the CPU), in one forward pass of a CDM.

        The same numbers as `cdm nll --out` on the same points (for a level above 0, x is taken
        as already noised to that level). Raises CdmError for a DDM, a level outside 0..=T, or
        points of the wrong shape.
        """
    def bits_per_dim(
        self,
        x: Array,
        dequantize: Optional[Literal["auto", "uniform", "paper"]] = "auto",
        level: int = 0,
        seed: int = 12345,
        batch: int = 1024,
        per_sample: bool = False,
    ) -> Union[float, Array]:
        """NLL of x in bits per dimension, as `cdm nll` reports it: the mean, or each point's
        ([N], float64, the same kind of array as x) with per_sample=True.

        "auto": 8-bit images (x = k/127.5 - 1) at level 0 get the 8-bit figure with uniform
        dequantization (drawn from `seed`), other data the continuous one; "uniform" or "paper"
        ask for that convention (8-bit images at level 0 only); None scores x as continuous
        points.
        """
    def denoise(self, x_t: Array, level: int, batch: int = 1024) -> Array:
        """The MMSE denoiser E[x0 | x_t] at `level` (1..=T), as `cdm denoise` computes it."""
    def eps(self, x_t: Array, level: int, batch: int = 1024) -> Array:
        """The predicted noise at `level` (1..=T): for a CDM, the classifier's input gradient."""
    def sample(
        self,
        n: int,
        sampler: Literal["ddpm", "ddim", "dpm2", "dpmpp2m"] = "ddim",
        steps: int = 50,
        parallel: Optional[int] = None,
        tol: float = 0.1,
        guidance: float = 0.0,
        class_: Optional[int] = None,
        seed: int = 0,
        eta: float = 0.0,
        clip_x0: Optional[float] = None,
        unconditional: bool = False,
        batch: int = 1024,
        cuda_graphs: bool = False,
    ) -> Samples:
        """`n` samples, as `cdm sample` draws them with the same options and seed.

        parallel=P refines windows of P steps by fixed-point iteration with tolerance `tol`;
        guidance, class_ and unconditional apply to conditional models; clip_x0 clips each
        step's x0 estimate to [-clip_x0, clip_x0]; cuda_graphs=True replays the network calls
        from CUDA graphs on a CUDA device (`cdm sample --cuda-graphs`).
        """

def load(
    path: Union[str, os.PathLike[str]],
    device: Literal["auto", "cpu", "cuda"] = "auto",
    ema: bool = True,
    precision: Optional[Literal["f32", "f64", "bf16"]] = None,
) -> Model:
    """Loads the trained model in a run folder written by `cdm train` (EMA weights unless ema=False)."""

def train(
    config: Union[Mapping[str, Any], str, os.PathLike[str], None] = None,
    *,
    out: Union[str, os.PathLike[str]],
    progress: Optional[Callable[[dict[str, Any]], object]] = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    restart: bool = False,
    cuda_graphs: bool = False,
) -> int:
    """Trains a run in `out`, or resumes the one there; returns the step reached.

    `config` is what `cdm train --config` reads, as a dict or the path of a TOML or JSON file:
    any of data, model, gaussian_base, base_per_class, schedule, backbone, train, over the
    defaults that suit the data. Without it the run in `out` resumes with its own settings.
    `progress` is called with each logged step's report (step, loss, ce, mse, lr, grad_norm,
    seconds, total_steps). An exception in it, or Ctrl-C (noticed at a report), stops training
    as SIGINT stops `cdm train`: after the next step, with a checkpoint of it; then it is
    raised. restart=True discards the run in `out` first. cuda_graphs=True replays each step's
    loss and backward pass from a CUDA graph on a CUDA device (`cdm train --cuda-graphs`).
    """
