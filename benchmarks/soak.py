"""Soak test: load held, faults survived, bad inputs tried, nothing lost.

    python benchmarks/soak.py   # full: 10^7 samples, 10^6 scores, 100 kills
    python benchmarks/soak.py --samples 1000000 --scores 100000 --cycles 10  # reduced

1. Train a tiny Glow on the digits through the CLI (`gentrain fit`, a
   checkpoint every step) without interruption: the reference.
2. Train it again, killing the process with SIGKILL at random moments and
   continuing with --resume, `--cycles` times; after each kill the checkpoint
   must load; at the end weights, optimiser state and step must equal the
   reference's bit for bit.
3. Export it (`genexport onnx`) and stream `--samples` samples into an npz
   with `genrun sample` while this script polls the process's resident memory:
   after warm-up (the first 10% of the run) it must stay within 10% of its
   level at the end of warm-up. The npz must hold every row, the first ones
   equal to `Sampler.sample`.
4. Score `--scores` samples with the density engine in this process, batch by
   batch, polling resident memory the same way; count non-finite scores.
5. Feed every CLI the hostile inputs of issue 10 and record exit status,
   message, wall time and peak memory: each must be a one-line error (exit 2).

Writes benchmarks/results/reliability.md (and prints it).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import math
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reliability.md"
MODEL = ["--levels", "1", "--depth", "2", "--hidden", "8", "--batch-size", "32"]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, **kwargs
    )


def popen(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def fit_args(out: Path, steps: int) -> list[str]:
    return [
        "gentrain",
        "fit",
        "glow",
        "--data",
        "digits",
        *MODEL,
        "--steps",
        str(steps),
        "--ckpt-every",
        "1",
        "--eval-every",
        str(steps),
        "--out",
        str(out),
    ]


# ----------------------------------------------------------------------------- kills


def kill_resume(work: Path, steps: int, cycles: int, seed: int) -> dict:
    from gentrain.checkpoint import load_checkpoint

    reference = work / "reference"
    started = time.perf_counter()
    done = run(fit_args(reference, steps))
    assert done.returncode == 0, done.stderr
    full_s = time.perf_counter() - started
    killed, rng = work / "killed", random.Random(seed)
    kills = loadable = finished_early = 0
    steps_at_kill = []
    while True:
        resume = (killed / "checkpoint.pt").exists()
        process = popen(fit_args(killed, steps) + (["--resume"] if resume else []))
        if kills >= cycles:
            process.communicate()
            assert process.returncode == 0, process.stderr.read() if process.stderr else ""
            break
        try:
            process.wait(timeout=rng.uniform(0.2, full_s))
            finished_early += 1  # the run ended before the kill: start it again from scratch
            for name in ("checkpoint.pt", "metrics.jsonl"):
                (killed / name).unlink(missing_ok=True)
            continue
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
        kills += 1
        if (killed / "checkpoint.pt").exists():
            payload = load_checkpoint(killed / "checkpoint.pt")  # raises if not loadable
            loadable += 1
            steps_at_kill.append(payload["step"])
    a, b = (load_checkpoint(path / "checkpoint.pt") for path in (reference, killed))
    same = (
        a["step"] == b["step"]
        and _equal(a["model"], b["model"])
        and _equal(a["optimizer"], b["optimizer"])
    )
    litter = sorted(p.name for p in killed.iterdir() if p.name.endswith(".tmp"))
    return dict(
        kills=kills,
        loadable=loadable,
        restarted=finished_early,
        steps=steps,
        steps_at_kill=steps_at_kill,
        identical=same,
        litter=litter,
        full_s=full_s,
    )


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ----------------------------------------------------------------------------- load


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def flatness(trace: list[tuple[float, int]]) -> dict:
    """RSS after warm-up (the first 10% of the time) against its level then."""
    end = trace[-1][0]
    warm = [rss for t, rss in trace if t <= 0.1 * end] or [trace[0][1]]
    after = [rss for t, rss in trace if t > 0.1 * end] or [trace[-1][1]]
    base = warm[-1]
    return dict(
        base_mib=base / 2**20,
        max_mib=max(after) / 2**20,
        growth=max(after) / base - 1,
        flat=max(after) <= 1.10 * base,
        polls=len(trace),
    )


def sample_soak(engine: Path, work: Path, n: int) -> dict:
    out = work / "samples.npz"
    started = time.perf_counter()
    process = popen(
        [
            "genrun",
            "sample",
            "--engine",
            str(engine),
            "--n",
            str(n),
            "--batch",
            "1024",
            "--temperature",
            "0.7",
            "--nonfinite",
            "keep",
            "--out",
            str(out),
        ]
    )
    trace = []
    while process.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            trace.append((time.perf_counter() - started, rss_of(process.pid)))
        time.sleep(0.2)
    _, err = process.communicate()
    wall = time.perf_counter() - started
    assert process.returncode == 0, err
    from genrun import Sampler, load

    with zipfile.ZipFile(out) as archive, archive.open("images.npy") as member:
        version = np.lib.format.read_magic(member)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(
            version, np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(member)
        first = np.frombuffer(member.read(1000 * math.prod(shape[1:])), dtype).reshape(
            -1, *shape[1:]
        )
    expected = Sampler(load(engine)).sample(1000, 0.7, batch_size=1024, nonfinite="keep")
    result = dict(
        n=n,
        rows=shape[0],
        wall_s=wall,
        per_s=n / wall,
        prefix_equal=bool(np.array_equal(first, expected)),
        npz_mib=out.stat().st_size / 2**20,
        warning=err.strip().splitlines()[-1:] if err.strip() else [],
        **flatness(trace),
    )
    out.unlink()
    return result


def score_soak(generate: Path, density: Path, n: int) -> dict:
    from genrun import Sampler, Scorer, load

    sampler, scorer = Sampler(load(generate)), Scorer(load(density))
    trace, total, count, nonfinite = [], 0.0, 0, 0
    started = time.perf_counter()
    stream = sampler.batches(n, 0.7, seed=1, batch_size=1024, nonfinite="keep")
    for batch in stream:
        bpd = scorer.bits_per_dim(batch, batch_size=1024)
        finite = np.isfinite(bpd)
        nonfinite += int((~finite).sum())
        total += float(bpd[finite].sum())
        count += int(finite.sum())
        trace.append((time.perf_counter() - started, rss_of(os.getpid())))
    wall = time.perf_counter() - started
    return dict(
        n=n,
        wall_s=wall,
        per_s=n / wall,
        mean_bpd=total / max(count, 1),
        nonfinite_scores=nonfinite,
        nonfinite_samples=stream.nonfinite,
        **flatness(trace),
    )


# ----------------------------------------------------------------------------- bad inputs


def hostile_inputs(work: Path, engines: dict[str, Path], checkpoint: Path) -> list[dict]:
    """(what, command) pairs; files written under work/bad."""
    bad = work / "bad"
    bad.mkdir()
    density, generate = str(engines["density"]), str(engines["generate"])
    cases = []

    def small_mnist(folder: Path) -> None:
        """Valid one-image train files and test labels: only t10k-images is bad."""
        folder.mkdir()
        image = b"\0\0\x08\x03" + struct.pack(">3I", 1, 28, 28) + bytes(784)
        label = b"\0\0\x08\x01" + struct.pack(">I", 1) + b"\0"
        (folder / "train-images-idx3-ubyte").write_bytes(image)
        (folder / "train-labels-idx1-ubyte").write_bytes(label)
        (folder / "t10k-labels-idx1-ubyte").write_bytes(label)

    bomb = bad / "bomb"
    small_mnist(bomb)
    header = b"\0\0\x08\x03" + struct.pack(">3I", 10000, 28, 28)
    with gzip.open(bomb / "t10k-images-idx3-ubyte.gz", "wb", compresslevel=9) as out:
        out.write(header)
        zeros = bytes(1 << 24)
        for _ in range(128):  # 2 GiB of zeros
            out.write(zeros)
    size = (bomb / "t10k-images-idx3-ubyte.gz").stat().st_size / 2**20
    cases.append(
        (
            f"gzip bomb: {size:.1f} MB gzip of 2 GiB zeros in mnist:DIR",
            ["genrun", "likelihood", "--engine", density, "--data", f"mnist:{bomb}"],
        )
    )

    overflow = bad / "overflow"
    small_mnist(overflow)
    (overflow / "t10k-images-idx3-ubyte").write_bytes(
        b"\0\0\x08\x03" + struct.pack(">3I", 2**31, 2**31, 4) + bytes(64)
    )
    cases.append(
        (
            "IDX dims 2^31 x 2^31 x 4",
            ["genrun", "likelihood", "--engine", density, "--data", f"mnist:{overflow}"],
        )
    )

    npz = bad / "lie.npz"
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 28, 28)}
    )
    with zipfile.ZipFile(npz, "w") as archive:
        archive.writestr("images.npy", buffer.getvalue() + bytes(1000))
    cases.append(
        (
            "npz header claiming (10^9, 28, 28)",
            ["genrun", "likelihood", "--engine", density, "--data", f"npz:{npz}"],
        )
    )

    png = bad / "bomb.png"

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    png.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 13000, 13000, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(bytes(13001 * 13000)))
        + chunk(b"IEND", b"")
    )
    cases.append(
        (
            f"13000x13000 PNG ({png.stat().st_size / 1024:.0f} KB)",
            ["genrun", "likelihood", "--engine", density, str(png)],
        )
    )
    cases.append(
        ("a folder given as an image file", ["genrun", "likelihood", "--engine", density, str(bad)])
    )

    import onnx

    from genrun.manifest import METADATA_KEY

    def with_manifest(name: str, edit) -> str:
        model = onnx.load(generate)
        import json

        for prop in model.metadata_props:
            if prop.key == METADATA_KEY:
                values = json.loads(prop.value)
                edit(values)
                prop.value = json.dumps(values)
        path = bad / name
        onnx.save(model, str(path))
        return str(path)

    cases.append(
        (
            'manifest latent_shapes "abc"',
            [
                "genrun",
                "sample",
                "--engine",
                with_manifest("abc.onnx", lambda v: v.update(latent_shapes="abc")),
                "--out",
                str(bad / "x.png"),
            ],
        )
    )
    cases.append(
        (
            "manifest input shape disagreeing with the graph",
            [
                "genrun",
                "sample",
                "--engine",
                with_manifest("shape.onnx", lambda v: v["inputs"][0]["shape"].__setitem__(1, 99)),
                "--out",
                str(bad / "x.png"),
            ],
        )
    )
    cases.append(
        (
            "manifest input dtype disagreeing with the graph",
            [
                "genrun",
                "sample",
                "--engine",
                with_manifest("dtype.onnx", lambda v: v["inputs"][0].update(dtype="uint8")),
                "--out",
                str(bad / "x.png"),
            ],
        )
    )
    corrupt = bad / "corrupt.onnx"
    data = bytearray(Path(generate).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = os.urandom(64)
    corrupt.write_bytes(bytes(data))
    cases.append(
        ("engine with 64 random bytes in the middle", ["genrun", "info", "--engine", str(corrupt)])
    )
    cases.append(
        (
            "--temperature 1e39",
            [
                "genrun",
                "sample",
                "--engine",
                generate,
                "--temperature",
                "1e39",
                "--out",
                str(bad / "t.png"),
            ],
        )
    )
    cases.append(
        (
            "bench --batch 100000 --seconds 1",
            ["genrun", "bench", "--engine", generate, "--batch", "100000", "--seconds", "1"],
        )
    )

    from gentrain.checkpoint import load_checkpoint, save_checkpoint

    def ckpt(name: str, edit) -> str:
        payload = load_checkpoint(checkpoint)
        edit(payload)
        return str(save_checkpoint(bad / name, payload))

    cases.append(
        (
            "checkpoint without family",
            ["gentrain", "eval", ckpt("nofamily.pt", lambda p: p.pop("family"))],
        )
    )
    cases.append(
        (
            "checkpoint config depth = 10**6",
            ["gentrain", "eval", ckpt("deep.pt", lambda p: p["model_config"].update(depth=10**6))],
        )
    )
    cases.append(
        (
            "checkpoint weights not fitting its config",
            ["gentrain", "eval", ckpt("misfit.pt", lambda p: p["model_config"].update(hidden=16))],
        )
    )
    cases.append(
        (
            "checkpoint with a NaN weight",
            [
                "genexport",
                "onnx",
                ckpt("nan.pt", lambda p: next(iter(p["model"].values())).fill_(float("nan"))),
                "--out",
                str(bad),
            ],
        )
    )

    rows = []
    for what, args in cases:
        started = time.perf_counter()
        process = popen(args)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
        process.stdout.close()
        process.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        lines = [line for line in err.splitlines() if line.strip()]
        rows.append(
            dict(
                what=what,
                code=code,
                wall_s=wall,
                peak_mib=usage.ru_maxrss / 1024,
                message=lines[-1][:150] if lines else "",
                ok=code == 2 and len(lines) == 1 and "Traceback" not in err,
            )
        )
    return rows


# ----------------------------------------------------------------------------- report


def report(args, kills: dict, samples: dict, scores: dict, bad: list[dict], total_s: float) -> str:
    full = (args.samples, args.scores, args.cycles) == (10**7, 10**6, 100)
    scale = (
        "full scale"
        if full
        else "REDUCED scale (the issue asks for 10^7 samples, 10^6 scores, 100 kills)"
    )
    k, s, c = kills, samples, scores

    def load_row(what: str, r: dict) -> str:
        return (
            f"| {what} | {r['n']:,} | {r['wall_s']:.0f} | {r['per_s']:,.0f} | "
            f"{r['base_mib']:.1f} | {r['max_mib']:.1f} | {r['growth']:+.1%} | {r['flat']} |"
        )

    warning = f"; sample stderr: {s['warning'][0]}" if s["warning"] else ""
    lines = [
        "# Reliability soak",
        "",
        f"`python benchmarks/soak.py --samples {args.samples} --scores {args.scores} "
        f"--cycles {args.cycles} --steps {args.steps}`: {scale}; {total_s / 60:.1f} min in "
        "all, on the shared 2-core machine, loaded by other engineers' jobs (timings are "
        "not speed figures). Model: Glow L=1, K=2, 8 hidden on the 8x8 digits.",
        "",
        "## Load held",
        "",
        "| load | count | wall s | per s | RSS after warm-up MiB | max RSS after MiB "
        "| growth | flat (<= 10%) |",
        "|---|---|---|---|---|---|---|---|",
        load_row("`genrun sample` -> streamed npz", s),
        load_row("Scorer (density engine), in process", c),
        "",
        f"npz: {s['rows']:,} rows of {s['n']:,} written ({s['npz_mib']:.0f} MiB), the first "
        f"1,000 equal to `Sampler.sample`: {s['prefix_equal']}. Memory polled every 0.2 s "
        f"({s['polls']} polls) for sampling, after each of {c['polls']} batches for scoring. "
        f"Non-finite: {c['nonfinite_samples']} samples, {c['nonfinite_scores']} scores"
        f"{warning}. Mean bits/dim of the finite scores {c['mean_bpd']:.4f}.",
        "",
        "## Faults survived",
        "",
        f"`gentrain fit glow --steps {k['steps']} --ckpt-every 1`, killed with SIGKILL at "
        f"random moments (uniform in 0.2 s .. one uninterrupted run, {k['full_s']:.1f} s) "
        f"and resumed with --resume: {k['kills']} kills; the checkpoint loaded after "
        f"{k['loadable']} of them (the others came before the first checkpoint); "
        f"{k['restarted']} runs finished before their kill and were started again. Steps "
        f"at the kills: {k['steps_at_kill']}. Final weights, optimiser state and step "
        f"bit-identical to the uninterrupted run: **{k['identical']}**. Temporary files "
        f"left: {k['litter'] or 'none'}.",
        "",
        "## Bad inputs tried",
        "",
        "| input | exit | one line | wall s | peak RSS MiB | message |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['what']} | {r['code']} | {r['ok']} | {r['wall_s']:.1f} | "
            f"{r['peak_mib']:.0f} | {r['message'].replace('|', '/')} |"
            for r in bad
        ],
        "",
        "## Nothing lost",
        "",
        f"- every sample requested is in the npz ({s['rows']:,} of {s['n']:,}), in order;",
        f"- the killed-and-resumed run ends where the uninterrupted one does: {k['identical']};",
        f"- {sum(r['ok'] for r in bad)} of {len(bad)} hostile inputs answered in one line, exit 2.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10**7)
    parser.add_argument("--scores", type=int, default=10**6)
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        kills = kill_resume(work, args.steps, args.cycles, args.seed)
        print(f"kills: {kills}", flush=True)
        checkpoint = work / "reference" / "checkpoint.pt"
        exported = run(
            ["genexport", "onnx", str(checkpoint), "--out", str(work / "engines"), "--name", "soak"]
        )
        assert exported.returncode == 0, exported.stderr
        engines = {role: work / "engines" / f"soak.{role}.onnx" for role in ("generate", "density")}
        samples = sample_soak(engines["generate"], work, args.samples)
        print(f"samples: {samples}", flush=True)
        scores = score_soak(engines["generate"], engines["density"], args.scores)
        print(f"scores: {scores}", flush=True)
        bad = hostile_inputs(work, engines, checkpoint)
        for row in bad:
            print(row, flush=True)
    text = report(args, kills, samples, scores, bad, time.perf_counter() - started)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    threading.current_thread().name = "soak"
    main()
