"""The paper's rows from the `cdm eval` reports of scripts/cifar10-eval.sh, as a Markdown table.

usage: python3 scripts/paper-rows.py RUN/eval
"""
import json
import pathlib
import sys

# The CDM paper's unconditional CIFAR-10 figures (Yadin et al. 2024, Tables 1 and 2; 50k
# samples), for the same rows.
PAPER = {
    "ddpm1000": "DDM 4.77, CDM 4.74",
    "ddim50": "DDM 7.19, CDM 7.56",
    "dpm2-25": "DDM 6.91, CDM 7.29",
    "nll": "CDM 3.38, CDM(unif.) 2.98",
}


def main(folder):
    folder = pathlib.Path(folder)
    rows = ["| part | model | figure | value | how | paper |", "|---|---|---|---|---|---|"]
    for name in ["nll", "ddpm1000", "ddim50", "ddim100", "dpm2-25"]:
        path = folder / name / "report.json"
        if not path.exists():
            rows.append(f"| {name} | | | not run | | {PAPER.get(name, '')} |")
            continue
        report = json.loads(path.read_text())
        model = f"{report['model'].upper()} step {report['step']}"
        if "fid" in report:
            f = report["fid"]
            how = f"{f['samples']} samples, {f['sampler']}; {f['reference_images']} training images"
            rows.append(f"| {name} | {model} | FID | {f['fid']:.2f} | {how} | {PAPER.get(name, '')} |")
        for row in report.get("nll", []):
            how = f"{row['n']} test images, {row['estimator']}, {row['convention']}"
            rows.append(f"| {name} | {model} | bits/dim | {row['bits_per_dim']:.3f} | {how} | {PAPER.get(name, '')} |")
    print("\n".join(rows))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
