"""Shrinks a checkpoint for the trip to a GPU host, and restores it there.

A run's checkpoint.safetensors holds every tensor of the model twice, once as `model/...` and
once as `ema/...`; for the Gaussian base (fixed statistics, about 24 MB for MNIST's ten
classes) the two copies are identical. `strip` drops each `ema/X` whose bytes equal `model/X`
and lists them in the metadata; `restore` puts them back, so the file is the same again.
Pure Python (the safetensors layout: an 8-byte header length, a JSON header, the data).
Usage: python3 checkpoint-dedup.py strip|restore IN OUT
"""
import json
import struct
import sys

DROPPED = "gpu_bundle_dropped"


def read(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {name: (info["dtype"], info["shape"], data[info["data_offsets"][0]:info["data_offsets"][1]])
               for name, info in header.items()}
    return metadata, tensors


def write(path, metadata, tensors):
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for chunk in chunks:
            f.write(chunk)


def main():
    mode, source, target = sys.argv[1:4]
    metadata, tensors = read(source)
    if mode == "strip":
        dropped = [name for name in tensors
                   if name.startswith("ema/") and tensors.get("model/" + name[4:]) == tensors[name]]
        for name in dropped:
            del tensors[name]
        metadata[DROPPED] = json.dumps(dropped)
    elif mode == "restore":
        for name in json.loads(metadata.pop(DROPPED, "[]")):
            tensors[name] = tensors["model/" + name[4:]]
    else:
        sys.exit(f"unknown mode {mode}: strip or restore")
    write(target, metadata, tensors)


if __name__ == "__main__":
    main()
