"""Prints the CUDA packages a torch wheel pins for this host, one requirement per line.

Reads the wheel's METADATA (the path given, a file or a *.dist-info folder) and keeps each
Requires-Dist whose marker holds here (no extra asked for) and that ships CUDA's shared
libraries: `nvidia-*` and `cuda-toolkit[...]`. The rest (sympy, triton, the Python-only
cuda-bindings, ...) are PyTorch-for-Python needs that libtorch does not load.
Usage: python3 cuda-requirements.py <torch-X.dist-info | METADATA>
"""
import email.parser
import pathlib
import sys

# pip's own copy of `packaging`, so that nothing else needs installing.
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement


def cuda_requirements(metadata_text):
    """The requirement strings (markers dropped) of the CUDA packages that apply here."""
    message = email.parser.Parser().parsestr(metadata_text, headersonly=True)
    kept = []
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if not (name.startswith("nvidia-") or name == "cuda-toolkit"):
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        kept.append(f"{req.name}{extras}{req.specifier}")
    return kept


def main():
    path = pathlib.Path(sys.argv[1])
    if path.is_dir():
        path = path / "METADATA"
    for requirement in cuda_requirements(path.read_text()):
        print(requirement)


if __name__ == "__main__":
    main()
