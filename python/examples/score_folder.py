"""Scores a folder of images with a trained image model: bits/dim per image, and their histogram.

    python python/examples/score_folder.py runs/mnist_cdm my_digits/ --out hist.png

Reads every PNG/JPEG in the folder with Pillow, converted to the model's channels (grayscale or
RGB) and resized to its size, as 8-bit images on the [-1, 1] scale the model was trained on.
Each image gets its NLL in bits/dim of the 8-bit values (uniform dequantization, an upper bound
on the discrete NLL), from one forward pass of a CDM. The histogram goes to --out as a PNG with
matplotlib if it is installed, and is printed as text otherwise (and always with --text).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

import cdm

EXTENSIONS = {".png", ".jpg", ".jpeg"}


def read_images(folder, shape):
    """The images in `folder` as an array [N, C, H, W] of k/127.5 - 1, and their names."""
    from PIL import Image

    channels, height, width = shape
    mode = {1: "L", 3: "RGB"}[channels]
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in EXTENSIONS)
    if not paths:
        sys.exit(f"{folder}: no PNG or JPEG images")
    images = []
    for path in paths:
        with Image.open(path) as image:
            k = np.asarray(image.convert(mode).resize((width, height)), dtype=np.float64)
        images.append(k.reshape(height, width, channels).transpose(2, 0, 1))
    return np.stack(images) / 127.5 - 1.0, [p.name for p in paths]


def text_histogram(values, bins=12, width=50):
    counts, edges = np.histogram(values, bins=bins)
    for count, lo, hi in zip(counts, edges, edges[1:]):
        print(f"{lo:8.3f} - {hi:8.3f} | {'#' * round(width * count / max(counts.max(), 1)):<{width}} {count}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder of a model trained on images (cdm train --out)")
    parser.add_argument("folder", help="folder of PNG/JPEG images")
    parser.add_argument("--out", default="bits_per_dim.png", help="histogram picture (needs matplotlib)")
    parser.add_argument("--text", action="store_true", help="print the histogram instead of drawing it")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    model = cdm.load(args.run, device=args.device)
    if len(model.data_shape) != 3:
        sys.exit(f"{args.run}: the model's data are not images (shape {model.data_shape})")
    x, names = read_images(args.folder, model.data_shape)
    bits = model.bits_per_dim(x, per_sample=True)
    for name, b in zip(names, bits):
        print(f"{b:8.4f}  {name}")
    print(f"{len(names)} images: mean {bits.mean():.4f} bits/dim, from {bits.min():.4f} to {bits.max():.4f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        plt = None
    if plt is None or args.text:
        if plt is None:
            print("(matplotlib is not installed: the histogram as text)")
        text_histogram(bits)
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(bits, bins="auto")
    ax.set_xlabel("NLL (bits/dim, 8-bit, uniform dequantization)")
    ax.set_ylabel("images")
    ax.set_title(f"{len(names)} images of {args.folder} under {args.run}")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"histogram written to {args.out}")


if __name__ == "__main__":
    main()
