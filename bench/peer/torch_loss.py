"""PyTorch peer of the log-prob / SPIN loss kernels (bench/loss.bench.ts runs it in the same session).

  /usr/bin/python3 bench/peer/torch_loss.py --n 4096 --v 32000 --dtype bf16 --threads 2 --reps 5

Times, on random logits [n, v] of the dtype:
  gather:   torch.log_softmax(x.float(), -1).gather(1, t[:, None])    (the usual way)
  forward:  the SPIN loss from the logits (log_softmax, gather, masked per-sequence sums, logsigmoid)
  backward: loss.backward() of that forward (autograd), gradient w.r.t. the logits
Prints one JSON line: median seconds of each, and the peak RSS growth over the inputs (bytes):
how much memory the ops need beyond their inputs.
"""
import argparse
import json
import statistics
import time

import torch


def rss_peak_bytes():
    # VmHWM is this address space's peak; getrusage's ru_maxrss would include the RSS of the process
    # that spawned us (Linux carries it across exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--v", type=int, default=32000)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dt = torch.float32 if a.dtype == "f32" else torch.bfloat16
    # filled in row blocks, so making the input does not raise the peak RSS above the input itself
    x = torch.empty(a.n, a.v, dtype=dt)
    for r in range(0, a.n, 256):
        x[r : r + 256] = torch.randn(min(256, a.n - r), a.v) * 3
    t = torch.randint(0, a.v, (a.n,))
    b = a.pairs
    seg = torch.arange(a.n) * (2 * b) // a.n  # contiguous runs: 2b sequences
    ref = torch.randn(2 * b) * 10 - 100
    base = rss_peak_bytes()

    def gather():
        return torch.log_softmax(x.float(), -1).gather(1, t[:, None]).squeeze(1)

    def spin_forward(leaf):
        logp = torch.log_softmax(leaf.float(), -1).gather(1, t[:, None]).squeeze(1)
        s = torch.zeros(2 * b).index_add(0, seg, logp)
        u = 0.1 * ((s[:b] - ref[:b]) - (s[b:] - ref[b:]))
        return -torch.nn.functional.logsigmoid(u).mean()

    times = {"gather": [], "forward": [], "backward": []}
    for rep in range(a.reps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            y = gather()
        t1 = time.perf_counter()
        del y
        leaf = x.detach().requires_grad_(True)
        t2 = time.perf_counter()
        loss = spin_forward(leaf)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        del leaf, loss
        if rep > 0:  # first round warms up
            times["gather"].append(t1 - t0)
            times["forward"].append(t3 - t2)
            times["backward"].append(t4 - t3)
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update(
        threads=torch.get_num_threads(),
        n=a.n, v=a.v, dtype=a.dtype,
        peak_rss_growth_bytes=rss_peak_bytes() - base,
        torch=torch.__version__,
        blas="OpenBLAS" if "openblas" in torch.__config__.show().lower() else "other",
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
