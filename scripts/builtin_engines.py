"""Make the engines that ship with genrun (genrun/builtin) with the project's
own commands, and record in each engine's manifest how it was made.

    .venv/bin/python scripts/builtin_engines.py --mnist /path/to/mnist [--work runs/builtin]

For each model below: `gentrain fit` (resumed where WORK holds the run: a
finished run is left as it is), `gentrain eval --json`, `genexport onnx
--graphs generate --marginal` (parity-checked before anything is written);
then each engine's manifest gets its `provenance` (this script, the exact
commands, the data and its licence, the measured results), the engines are
copied into genrun/builtin and genrun/builtin/README.md is written from the
manifests. Needs `.[export]` (torch) and the MNIST IDX files; nothing else.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from genrun.manifest import CONDITIONAL_VERSION, Provenance  # noqa: E402
from genrun.manifest_io import read_from_onnx, write_to_onnx  # noqa: E402

BUILTIN = ROOT / "genrun" / "builtin"
SCRIPT = "scripts/builtin_engines.py"
MNIST_DATA = (
    "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges; CC BY-SA 3.0, "
    "http://yann.lecun.com/exdb/mnist/): the 8,000-image training and 1,000-image test "
    "subset of the IDX files, 28x28 grey, 10 classes"
)
DIGITS_DATA = (
    "the 8x8 digits of UCI Optical Recognition of Handwritten Digits (E. Alpaydin, C. "
    "Kaynak 1998; CC BY 4.0; genrun/data/DIGITS.md), shipped as `--data digits`: 1,617 "
    "training and 180 test images, 17 grey levels (5 bits), 10 classes"
)
# name -> (data spec, the data in words); every other setting is gentrain's default.
MODELS = {
    "mnist-glow": ("mnist:{mnist}", MNIST_DATA),
    "digits-glow": ("digits", DIGITS_DATA),
}
# What `gentrain eval` measures that the manifest records (test split).
RESULTS = {
    "bpd": "test_bpd_given_label",
    "bpd_marginal": "test_bpd_marginal",
    "accuracy": "test_accuracy",
}


def run(command: list[str]) -> str:
    """Run one of the project's commands from .venv/bin; its line as recorded."""
    line = shlex.join(command)
    print(f"$ {line}", flush=True)
    subprocess.run([str(ROOT / ".venv" / "bin" / command[0]), *command[1:]], check=True, cwd=ROOT)
    return line


def make(name: str, spec: str, data: str, work: Path) -> list[Path]:
    run_dir = work / name
    fit = ["gentrain", "fit", "glow", "--conditional", "--data", spec, "--seed", "0"]
    fit += ["--out", str(run_dir)]
    resume = ["--resume"] if (run_dir / "checkpoint.pt").is_file() else []
    commands = [run(fit + resume).removesuffix(" --resume")]
    evaluated = run_dir / "eval.json"
    commands.append(
        run(["gentrain", "eval", str(run_dir / "checkpoint.pt"), "--json", str(evaluated)])
    )
    engines = run_dir / "engines"
    export = ["genexport", "onnx", str(run_dir / "checkpoint.pt"), "--graphs", "generate"]
    commands.append(run([*export, "--marginal", "--name", name, "--out", str(engines)]))
    metrics = json.loads(evaluated.read_text())["metrics"]
    results = {key: metrics[metric]["mean"] for metric, key in RESULTS.items()}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    results["steps"] = float(train[-1]["step"])
    results["seed"] = 0.0
    results["training_minutes"] = (train[-1]["time"] - train[0]["time"]) / 60
    written = []
    for graph in ("generate", "marginal"):
        path = engines / f"{name}.{graph}.onnx"
        import onnx  # the export extra: only here

        model = onnx.load(str(path))
        manifest = read_from_onnx(path)
        manifest.provenance = Provenance(SCRIPT, commands, data, results)
        manifest.version = CONDITIONAL_VERSION
        write_to_onnx(model, manifest)
        target = BUILTIN / path.name
        target.write_bytes(model.SerializeToString())
        written.append(target)
    return written


def readme() -> str:
    """genrun/builtin/README.md from the shipped manifests."""
    lines = [
        "# Engines that ship with genrun",
        "",
        "Made by `scripts/builtin_engines.py` with the project's own commands; each engine's",
        "manifest records the same (`genrun info --engine builtin:NAME.GRAPH`, `genrun models`).",
        "Training ran on a shared, loaded 2-core CPU machine (training_minutes says so).",
        "Every setting not in the commands is gentrain's default for a conditional Glow",
        "(class couplings on, class ActNorm off, `--class-weight 0`; docs/conditional.md).",
        "",
    ]
    for path in sorted(BUILTIN.glob("*.generate.onnx")):
        name = path.name.split(".")[0]
        made = read_from_onnx(path).provenance
        lines += [f"## builtin:{name}", "", f"Data: {made.data}.", ""]
        for graph in ("generate", "marginal"):
            size = (BUILTIN / f"{name}.{graph}.onnx").stat().st_size
            lines.append(f"- `{name}.{graph}.onnx`: {size / 1024:.0f} KiB")
        lines += ["", "Commands:", "", "```"]
        lines += [*made.commands, "```", "", "Measured:", ""]
        lines += [f"- {key}: {value:.4g}" for key, value in made.results.items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, required=True, help="folder of the MNIST IDX files")
    parser.add_argument("--work", type=Path, default=Path("runs/builtin"), help="run folders")
    parser.add_argument("--only", choices=sorted(MODELS), help="make this model only")
    args = parser.parse_args()
    BUILTIN.mkdir(exist_ok=True)
    for name, (spec, data) in MODELS.items():
        if args.only in (None, name):
            make(name, spec.format(mnist=args.mnist.resolve()), data, args.work)
    (BUILTIN / "README.md").write_text(readme())
    shutil.copy(ROOT / "genrun" / "data" / "DIGITS.md", BUILTIN / "DIGITS.md")
    print(f"wrote {BUILTIN}")


if __name__ == "__main__":
    main()
