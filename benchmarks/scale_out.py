"""Scale-out: wall time of ``evaluate`` and a channel ``ablate`` on 1 and on N processes.

Runs the CLI as a user would — ``netlens evaluate zoo:shapes-allconv --data shapes ...`` and the
same with ``--distributed N`` (torch's launcher, gloo on CPU) — on the generated ``shapes`` test
split (2,000 images, 64², with masks), and prints, per command, the wall time with 1 and with N
processes and their ratio. The per-process overhead is measured on its own: the same command on
N images in batches of one (start-up, imports, data generation, rendezvous, the exchanges),
with 1 and with N processes. Each process gets ``cores / N`` threads, so 1 process uses every
core too.

The machine's load average is printed first and last: on a shared machine the figures are
indicative only.

    python benchmarks/scale_out.py [--procs 2] [--images 2000] [--only evaluate,ablate]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

MODEL = "zoo:shapes-allconv"


def commands(images: int) -> dict[str, list[str]]:
    """The benchmarked commands (without --out and --distributed)."""
    return {
        "evaluate": [
            "evaluate", MODEL, "--data", "shapes", "--limit", str(images),
            "--method", "gradcam", "--metric", "pointing,energy,deletion", "--steps", "8",
        ],
        "ablate": [
            "ablate", MODEL, "--data", "shapes", "--limit", str(images),
            "--layers", "features.4", "--channels", "all", "--mode", "zero",
        ],
    }  # fmt: skip


def wall(args: list[str], procs: int, threads: int) -> float:
    """Seconds for ``netlens ARGS`` on ``procs`` processes (raises on a failed run)."""
    env = {**os.environ, "NETLENS_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "netlens", *args, "--quiet", "--out", out]
        if procs > 1:
            cmd += ["--distributed", str(procs)]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        secs = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} on {procs} process(es) failed: {done.stderr}")
    return secs


def tiny(args: list[str], n: int) -> list[str]:
    """``args`` on ``n`` images, one per batch (each of ``n`` processes gets one)."""
    out = list(args)
    out[out.index("--limit") + 1] = str(n)
    return [*out, "--batch-size", "1"]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--only", default="evaluate,ablate")
    a = ap.parse_args()
    cores = os.cpu_count() or 1
    n = a.procs
    print(f"scale-out on {n} processes, {a.images} generated shapes images; {load()}")
    print(f"threads: {cores} for 1 process, {max(1, cores // n)} per process for {n}")
    head = f"{'command':10} {'1 proc s':>9} {f'{n} procs s':>10} {'ratio':>6}  per-process overhead"
    print(head)
    for name, args in commands(a.images).items():
        if name not in a.only.split(","):
            continue
        t1 = wall(args, 1, cores)
        tn = wall(args, n, max(1, cores // n))
        o1 = wall(tiny(args, n), 1, cores)
        on = wall(tiny(args, n), n, max(1, cores // n))
        print(
            f"{name:10} {t1:9.1f} {tn:10.1f} {t1 / tn:6.2f}  "
            f"{o1:.1f} s alone, {on:.1f} s on {n} processes (+{on - o1:.1f} s)"
        )
    print(load())


if __name__ == "__main__":
    main()
