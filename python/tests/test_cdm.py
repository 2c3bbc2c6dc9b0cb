"""Every call of the Python package against the command line's results on the same inputs."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import cdm
from conftest import ENV, cli, cli_json


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    """300 points of [2] (float64) and their .npy file."""
    x = np.random.RandomState(0).randn(300, 2) * 1.5
    path = tmp_path_factory.mktemp("data") / "points.npy"
    np.save(path, x)
    return x, path


def test_load_describes_the_run(points_run, image_run):
    m = cdm.load(points_run, device="cpu")
    assert (m.kind, m.data_shape, m.timesteps, m.device, m.step, m.num_classes) == ("cdm", (2,), 10, "cpu", 20, 0)
    assert m.config["data"] == "gmm2d"
    images = cdm.load(image_run, device="cpu")
    assert (images.data_shape, images.num_classes) == ((1, 8, 8), 10)


@pytest.mark.parametrize("level", [0, 3])
def test_log_prob_is_cdm_nll(points_run, points, tmp_path, level):
    x, path = points
    out = tmp_path / "log_p.npy"
    report = cli_json("nll", "--ckpt", points_run, "--data", f"npy:{path}", "--level", level, "--out", out,
                      "--device", "cpu")
    m = cdm.load(points_run, device="cpu")
    log_p = m.log_prob(x, level=level)
    assert isinstance(log_p, np.ndarray) and log_p.shape == (300,)
    np.testing.assert_allclose(log_p, np.load(out), rtol=1e-6, atol=1e-6)
    assert m.bits_per_dim(x, level=level) == pytest.approx(report["nll_bits_per_dim"], rel=1e-6)


def test_torch_and_numpy_give_the_same_answer(points_run, points):
    x, _ = points
    m = cdm.load(points_run, device="cpu")
    from_numpy = m.log_prob(x)
    from_torch = m.log_prob(torch.from_numpy(x))
    assert isinstance(from_torch, torch.Tensor)
    np.testing.assert_array_equal(from_torch.numpy(), from_numpy)
    as_f32 = m.denoise(torch.from_numpy(x).float().requires_grad_(), 5)
    assert isinstance(as_f32, torch.Tensor) and not as_f32.requires_grad
    np.testing.assert_array_equal(as_f32.numpy(), m.denoise(x.astype(np.float32), 5))


def test_bits_per_dim_of_8bit_images_is_cdm_nll(image_run, tmp_path):
    # 8-bit images as the library holds them, k/127.5 - 1.
    x = np.random.RandomState(1).randint(0, 256, size=(40, 1, 8, 8)) / 127.5 - 1.0
    path = tmp_path / "images.npy"
    np.save(path, x)
    m = cdm.load(image_run, device="cpu")
    for how, flags in [("auto", []), ("paper", ["--dequantize", "paper"]), (None, ["--continuous"])]:
        report = cli_json("nll", "--ckpt", image_run, "--data", f"npy:{path}", "--device", "cpu", *flags)
        expected = report["bits_per_dim_8bit"] if how else report["nll_bits_per_dim"]
        assert m.bits_per_dim(x, dequantize=how) == pytest.approx(expected, rel=1e-5), how
    per_image = m.bits_per_dim(torch.from_numpy(x), per_sample=True)
    assert per_image.shape == (40,) and per_image.mean().item() == pytest.approx(m.bits_per_dim(x), rel=1e-9)


def test_denoise_is_cdm_denoise_and_eps_its_noise(points_run, points, tmp_path):
    x, path = points
    out = tmp_path / "denoised.npy"
    cli("denoise", "--ckpt", points_run, "--input", path, "--level", 5, "--out", out, "--device", "cpu")
    m = cdm.load(points_run, device="cpu")
    x0 = m.denoise(x, 5)
    np.testing.assert_allclose(x0, np.load(out), rtol=1e-5, atol=1e-5)
    a = m.alpha_bar(5)
    eps = m.eps(x, 5)
    np.testing.assert_allclose((x - np.sqrt(1 - a) * eps) / np.sqrt(a), x0, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, flags",
    [
        (dict(steps=10, seed=3), ["--steps", 10, "--seed", 3]),
        (dict(sampler="ddpm", steps=10, seed=4), ["--sampler", "ddpm", "--steps", 10, "--seed", 4]),
        (dict(steps=10, parallel=4, tol=0.05, seed=5), ["--steps", 10, "--parallel", 4, "--tol", 0.05, "--seed", 5]),
        # On the CPU graphs are off: the flag is taken and changes nothing.
        (dict(steps=10, seed=6, cuda_graphs=True), ["--steps", 10, "--seed", 6, "--cuda-graphs"]),
    ],
)
def test_sample_is_cdm_sample(points_run, tmp_path, kwargs, flags):
    out = tmp_path / "samples.npy"
    report = cli_json("sample", "--ckpt", points_run, "--n", 16, "--out", out, "--device", "cpu", *flags)
    s = cdm.load(points_run, device="cpu").sample(16, **kwargs)
    np.testing.assert_allclose(s.x.numpy(), np.load(out), rtol=1e-5, atol=1e-5)
    assert s.labels is None
    for key in ["steps", "batches", "iterations", "evaluations", "largest_batch"]:
        assert s.cost[key] == report["cost"][key], key


def test_conditional_sample_is_cdm_sample(image_run, tmp_path):
    out = tmp_path / "samples.npy"
    cli("sample", "--ckpt", image_run, "--n", 6, "--steps", 3, "--class", 2, "--guidance", 1.5, "--seed", 7,
        "--out", out, "--device", "cpu")
    s = cdm.load(image_run, device="cpu").sample(6, steps=3, class_=2, guidance=1.5, seed=7)
    assert s.labels == [2] * 6
    np.testing.assert_allclose(s.x.numpy(), np.load(out), rtol=1e-5, atol=1e-5)


def cli_error(*args):
    code, stderr = cli(*args, ok=False)
    assert code != 0
    return next(line.removeprefix("error: ") for line in stderr.splitlines() if line.startswith("error: "))


def test_a_bad_path_raises_the_library_message(tmp_path):
    missing = tmp_path / "none"
    with pytest.raises(cdm.CdmError) as raised:
        cdm.load(missing, device="cpu")
    assert str(raised.value) == cli_error("nll", "--ckpt", missing, "--data", "gmm2d", "--device", "cpu")
    assert "No such file" in str(raised.value)


def test_a_wrong_shape_raises_the_library_message(points_run, tmp_path):
    wrong = np.zeros((4, 3))
    np.save(tmp_path / "wrong.npy", wrong)
    m = cdm.load(points_run, device="cpu")
    with pytest.raises(cdm.CdmError) as raised:
        m.log_prob(wrong)
    assert str(raised.value).startswith("shape: ")
    assert str(raised.value) in cli_error("nll", "--ckpt", points_run, "--data", f"npy:{tmp_path}/wrong.npy",
                                          "--device", "cpu")
    with pytest.raises(cdm.CdmError, match="shape: "):
        m.denoise(torch.zeros(4, 3), 5)
    with pytest.raises(cdm.CdmError, match="level 11"):
        m.denoise(wrong[:, :2], 11)
    with pytest.raises(TypeError, match="torch.Tensor or a numpy.ndarray"):
        m.log_prob([[0.0, 0.0]])
    with pytest.raises(cdm.CdmError, match="a class and guidance need a conditional model"):
        m.sample(2, class_=3)


CONFIG = {
    "data": "gmm2d",
    "schedule": {"kind": "linear", "timesteps": 10},
    "backbone": {"type": "mlp", "hidden": 16, "blocks": 1},
    "train": {"steps": 20, "batch_size": 64, "log_every": 5, "checkpoint_every": 10},
}


def test_train_is_cdm_train_and_resumes(tmp_path):
    import json

    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    cli("train", "--config", config, "--out", tmp_path / "cli", "--device", "cpu")
    reports = []
    half = {**CONFIG, "train": {**CONFIG["train"], "steps": 10}}
    assert cdm.train(half, out=tmp_path / "py", progress=reports.append, device="cpu") == 10
    # Graphs are off on the CPU: the second half trains as without them.
    assert cdm.train(config, out=tmp_path / "py", progress=reports.append, device="cpu", cuda_graphs=True) == 20
    assert [r["step"] for r in reports] == [5, 10, 15, 20]
    assert reports[-1]["total_steps"] == 20 and reports[-1]["loss"] > 0
    # Finished: resuming without a config trains nothing.
    assert cdm.train(out=tmp_path / "py", device="cpu") == 20
    by_cli, by_python = cdm.load(tmp_path / "cli", device="cpu"), cdm.load(tmp_path / "py", device="cpu")
    assert by_python.config == by_cli.config
    x = np.random.RandomState(2).randn(50, 2)
    np.testing.assert_allclose(by_python.log_prob(x), by_cli.log_prob(x), rtol=1e-5, atol=1e-5)


def test_train_stops_at_a_checkpoint_when_progress_raises(tmp_path):
    def stop(report):
        if report["step"] == 5:
            raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        cdm.train(CONFIG, out=tmp_path / "run", progress=stop, device="cpu")
    # As after Ctrl-C: the step under way when it was noticed is finished and saved.
    assert cdm.load(tmp_path / "run", device="cpu").step == 6
    assert cdm.train(out=tmp_path / "run", device="cpu") == 20


def test_train_raises_the_library_message(tmp_path):
    with pytest.raises(cdm.CdmError, match="unknown field"):
        cdm.train({**CONFIG, "train": {"stepz": 3}}, out=tmp_path / "bad", device="cpu")
    with pytest.raises(cdm.CdmError, match="no training data"):
        cdm.train(out=tmp_path / "empty", device="cpu")


def test_a_mismatched_torch_is_refused_before_loading(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "2.10.0"\n')
    env = {**ENV, "PYTHONPATH": f"{fake.parent}:{ENV.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", "import cdm"], capture_output=True, text=True, env=env)
    assert run.returncode == 1, run.stderr
    assert "ImportError: cdm needs torch 2.11" in run.stderr
    assert "this Python has torch 2.10.0" in run.stderr


def test_the_example_scores_a_folder(image_run, tmp_path):
    from PIL import Image

    from conftest import REPO

    k = np.random.RandomState(3).randint(0, 256, size=(5, 8, 8)).astype(np.uint8)
    for i, image in enumerate(k):
        Image.fromarray(image, mode="L").save(tmp_path / f"{i}.png")
    example = REPO / "python" / "examples" / "score_folder.py"
    run = subprocess.run([sys.executable, example, image_run, tmp_path, "--text", "--device", "cpu"],
                         capture_output=True, text=True, env=ENV)
    assert run.returncode == 0, run.stderr
    expected = cdm.load(image_run, device="cpu").bits_per_dim(k[:, None] / 127.5 - 1.0, per_sample=True)
    printed = [float(line.split()[0]) for line in run.stdout.splitlines()[:5]]
    np.testing.assert_allclose(printed, expected, atol=1e-4)
    assert "5 images: mean" in run.stdout and "|" in run.stdout
