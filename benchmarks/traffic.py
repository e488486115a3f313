"""Memory traffic of each operation, measured with cachegrind's cache simulation.

    python benchmarks/traffic.py            # needs valgrind on PATH

Runs every operation once (1 thread) on a float32 tensor of 8 MiB under
``valgrind --tool=cachegrind --cache-sim=yes`` with a simulated last-level cache
of 1 MiB, and counts last-level misses (data reads plus writes; a write miss
fetches the line, as write-allocate caches do). Misses times 64 bytes, minus
those of the same script without the operation, divided by the tensor's size,
is the traffic in tensors: 2.0 for one read and one write of the tensor. The
issue's bounds: LRN forward 1 read + 1 write, LRN backward 2 reads + 1 write,
BN inference 1 + 1, BN training at most 2 reads + 1 write, BN backward at most
2 reads of x and dy + 1 write.
"""
import os
import re
import subprocess
import sys
import tempfile

SHAPE = (8, 64, 64, 64)  # 2 Mi float32 values: 8 MiB, 8 times the simulated LL
LL = "1048576,16,64"
LIMITS = {"lrn_forward": 2, "lrn_backward": 3, "bn_inference": 2, "bn_training": 3,
          "bn_backward": 5}

SCRIPT = """
import numpy as np, cnorm
rng = np.random.default_rng(0)
x = rng.standard_normal({shape}, dtype=np.float32)
dy = rng.standard_normal({shape}, dtype=np.float32)
out = np.zeros_like(x)
C = x.shape[-1]
mean, invstd = np.zeros(C), np.ones(C)
op = {op!r}
if op == "lrn_forward":
    cnorm.lrn(x, 2, 2.0, 1e-4, 0.75, out=out, n_threads=1)
elif op == "lrn_backward":
    cnorm.lrn_backward(dy, x, 2, 2.0, 1e-4, 0.75, out=out, n_threads=1)
elif op == "bn_inference":
    cnorm.batch_norm_inference(x, mean, invstd, out=out, n_threads=1)
elif op == "bn_training":
    cnorm.batch_norm_training(x, out=out, n_threads=1)
elif op == "bn_backward":
    cnorm.batch_norm_backward(dy, x, mean, invstd, out=out, n_threads=1)
"""


def _misses(op):
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "op.py")
        with open(script, "w") as f:
            f.write(SCRIPT.format(shape=SHAPE, op=op))
        result = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=yes", f"--LL={LL}",
             f"--cachegrind-out-file={tmp}/out", sys.executable, script],
            capture_output=True, text=True, check=True)
    # "==123== LL misses: 1,234 ( 1,000 rd + 234 wr)"
    match = re.search(r"LL misses:\s+([\d,]+)", result.stderr)
    return int(match.group(1).replace(",", ""))


def main():
    tensor = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3]
    base = _misses("none")
    print(f"float32 {'x'.join(map(str, SHAPE))} ({tensor / 2**20:.0f} MiB), simulated LL 1 MiB, 1 thread")
    print(f"{'operation':14s} {'traffic (tensors)':>18s} {'bound':>6s}")
    failed = False
    for op, limit in LIMITS.items():
        traffic = (_misses(op) - base) * 64 / tensor
        failed |= traffic > limit * 1.05
        print(f"{op:14s} {traffic:18.2f} {limit:6d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
