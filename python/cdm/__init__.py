"""Classification diffusion models from Python: the `cdm` library in this process.

    import cdm
    m = cdm.load("runs/demo")
    log_p = m.log_prob(x)                  # nats per sample, one forward pass
    s = m.sample(64, steps=50, seed=0)     # s.x, s.cost
    cdm.train({"data": "gmm2d", "train": {"steps": 500}}, out="runs/mine")

Tensors are shared with torch without copies: the extension uses the libtorch that torch itself
loads, so torch must be the version it was built against, checked here before it is loaded.
"""

TORCH_VERSION = "2.11"
"""The torch release (major.minor) whose libtorch the extension is built against."""


def _check_torch():
    needed = f"cdm needs torch {TORCH_VERSION} (its libtorch is the one the extension is built against): pip install 'torch=={TORCH_VERSION}.*'"
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{needed}; torch cannot be imported here: {e}") from e
    # "2.11.0", "2.11.0+cpu", "2.11.0+cu130": the release before any local part.
    found = torch.__version__.split("+")[0]
    if found.split(".")[:2] != TORCH_VERSION.split("."):
        raise ImportError(f"{needed}; this Python has torch {torch.__version__} ({torch.__file__})")


# Before the extension is loaded: with another torch, its libtorch would not match ours.
_check_torch()

from cdm._cdm import CdmError, Model, Samples, load, train  # noqa: E402

__all__ = ["CdmError", "Model", "Samples", "TORCH_VERSION", "load", "train"]
