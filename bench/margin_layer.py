"""Benchmark: MarginInnerProduct Forward+Backward on the CPU at SphereFace's fc6 size.

    PYTHONPATH=. python bench/margin_layer.py [--m 256 --k 512 --n 10572 --repeat 5]

Measures (float32, QUADRUPLE, m = 4):
  * ours: the layer's forward + backward (feature and weight gradients), with the
    weight diff cleared first as the solver does each iteration, and also adding to a
    non-zero weight diff (the blocked path);
  * the three matrix products of those sizes alone (X.W^T, top_diff.W, top_diff^T.X),
    numpy/BLAS, into preallocated outputs: the floor any implementation pays;
  * a straightforward numpy port of the ORIGINAL algorithm, written here as the
    reference: its seven M x N buffers (cos, cos^2, cos^3, cos^4, sign_0, sign_3,
    sign_4), the label loop, the second GEMM for lambda, and its backward loop over
    rows and classes, vectorised over the classes of a row (one GEMV per row, M*N*K
    without a GEMM, the structure of the original GPU kernel);
  * the literal per-(row, class) loop of the original CPU backward, timed on a few
    rows and extrapolated (far too slow to run whole in Python);
  * the peak memory allocated during one forward + backward (tracemalloc; numpy
    reports its array buffers to it), beyond the preallocated blobs.
With --coretype it also reruns the products with OPENBLAS_CORETYPE unset and set to a
few values (a fresh interpreter each, as OpenBLAS reads it at load time).
"""

import argparse
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def best_time(fn, repeat):
    fn()  # warm-up (allocations, BLAS threads)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def best_times_interleaved(fns, repeat):
    """Best time of each function, the functions run in turn in every round, so that a
    burst of load from other processes hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def peak_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def make_inputs(m, k, n, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (0.05 * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, n, size=m).astype(dtype)
    top_diff = (rng.standard_normal((m, n)) / m).astype(dtype)
    return x, w, labels, top_diff


# -- ours ------------------------------------------------------------------------------

def ours(m, k, n, lam_base=1000.0):
    from pyfacelayers.blob import Blob
    from pyfacelayers.layers.margin_inner_product import MarginInnerProduct

    x, w, labels, top_diff = make_inputs(m, k, n)
    layer = MarginInnerProduct.from_args(num_output=n, type="QUADRUPLE", base=lam_base,
                                         gamma=0.12, power=1, lambda_min=5)
    bottom = [Blob((m, k)), Blob((m,))]
    top = [Blob((1,)), Blob((1,))]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = w
    bottom[0].data[...] = x
    bottom[1].data[...] = labels
    top[0].diff[...] = top_diff

    def step():
        layer.blobs[0].diff[...] = 0  # the solver's ClearParamDiffs, every iteration
        layer.forward(bottom, top)
        layer.backward(top, [True, False], bottom)

    def step_accumulating():  # weight diff not cleared (iter_size > 1, shared weights)
        layer.forward(bottom, top)
        layer.backward(top, [True, False], bottom)

    return step, step_accumulating, (layer, bottom, top)


def products(m, k, n):
    x, w, _, top_diff = make_inputs(m, k, n)
    out, bdiff, wdiff = (np.empty((m, n), np.float32), np.empty((m, k), np.float32),
                         np.empty((n, k), np.float32))

    def step():
        np.matmul(x, w.T, out=out)
        np.matmul(top_diff, w, out=bdiff)
        np.matmul(top_diff.T, x, out=wdiff)

    return step


# -- the reference port of the original ---------------------------------------------------

class OriginalPort:
    """The original CPU algorithm, QUADRUPLE, as a direct numpy transcription."""

    def __init__(self, x, w, labels, top_diff, lam):
        self.x, self.w, self.labels, self.top_diff, self.lam = x, w.copy(), labels, top_diff, lam
        self.w_diff = np.zeros_like(w)

    def forward(self):
        x, w, lam = self.x, self.w, np.float32(self.lam)
        m, n = x.shape[0], w.shape[0]
        for j in range(n):  # in-place row normalisation, one row at a time
            w[j] *= np.float32(1) / np.sqrt(np.dot(w[j], w[j]))
        self.x_norm = np.sqrt(np.einsum("ij,ij->i", x, x))
        self.cos = (x @ w.T) / self.x_norm[:, None]                 # M x N buffer 1
        self.sign_0 = np.sign(self.cos)                             # 2
        self.cos2 = np.power(self.cos, 2)                           # 3
        self.cos3 = np.power(self.cos, 3)                           # 4
        self.cos4 = np.power(self.cos, 4)                           # 5
        self.sign_3 = self.sign_0 * np.sign(2 * self.cos2 - 1)      # 6
        self.sign_4 = 2 * self.sign_0 + self.sign_3 - 3             # 7
        top = x @ w.T
        for i in range(m):
            y = int(self.labels[i])
            top[i, y] = self.x_norm[i] * (self.sign_3[i, y] * (
                8 * self.cos4[i, y] - 8 * self.cos2[i, y] + 1) + self.sign_4[i, y])
        top += lam * (x @ w.T)  # the original's second GEMM
        top *= np.float32(1) / (1 + lam)
        self.top = top

    def _label_coeffs(self, i, y):
        c, c2, c3, c4 = self.cos[i, y], self.cos2[i, y], self.cos3[i, y], self.cos4[i, y]
        s3, s4 = self.sign_3[i, y], self.sign_4[i, y]
        cw = s3 * (32 * c3 - 16 * c)
        cx = -(s3 * (24 * c4 - 8 * c2 - 1) - s4) / self.x_norm[i]
        norm = np.sqrt(cw * cw + cx * cx)
        return cw / norm, cx / norm

    def backward(self):
        x, w, lam, td = self.x, self.w, np.float32(self.lam), self.top_diff
        self.w_diff += td.T @ x
        bd = np.zeros_like(x)
        inv = np.float32(1) / (1 + lam)
        for i in range(x.shape[0]):
            # Every class of row i, vectorised over the classes: one GEMV per row.
            y = int(self.labels[i])
            coeff = inv * td[i]
            cw, cx = self._label_coeffs(i, y)
            coeff_y = coeff[y]
            coeff[y] = coeff_y * cw
            bd[i] = coeff @ w + coeff_y * cx * x[i]
        bd += (lam * inv) * (td @ w)  # + lambda / (1 + lambda) * top_diff . W
        self.bottom_diff = bd

    def backward_literal_rows(self, rows):
        """The original's loop over (row, class) pairs, each an axpby of K values."""
        x, w, lam, td = self.x, self.w, np.float32(self.lam), self.top_diff
        inv = np.float32(1) / (1 + lam)
        bd = np.zeros((rows, x.shape[1]), x.dtype)
        for i in range(rows):
            y = int(self.labels[i])
            for j in range(w.shape[0]):
                if j != y:
                    bd[i] += (inv * td[i, j]) * w[j]
                else:
                    cw, cx = self._label_coeffs(i, j)
                    bd[i] += (inv * td[i, j] * cw) * w[j]
                    bd[i] += (inv * td[i, j] * cx) * x[i]
        return bd

    def step(self):
        self.forward()
        self.backward()


def coretype_products(args):
    """Time the three products in fresh interpreters with OPENBLAS_CORETYPE varied."""
    rows = []
    for value in [None, "Zen", "Haswell", None, "Zen", "Haswell", "Sandybridge", "SkylakeX"]:
        env = dict(os.environ)
        env.pop("OPENBLAS_CORETYPE", None)
        if value:
            env["OPENBLAS_CORETYPE"] = value
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--products-only", "--m", str(args.m),
             "--k", str(args.k), "--n", str(args.n), "--repeat", str(args.repeat)],
            env=env, capture_output=True, text=True)
        if out.returncode == 0:
            rows.append((value or "(unset)", "%.1f" % (float(out.stdout.strip()) * 1e3)))
        elif out.returncode == -4:
            rows.append((value, "SIGILL: kernels need instructions this CPU lacks"))
        else:
            rows.append((value, "failed (exit %d)" % out.returncode))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--k", type=int, default=512)
    ap.add_argument("--n", type=int, default=10572)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--literal-rows", type=int, default=4)
    ap.add_argument("--coretype", action="store_true",
                    help="also time the products under several OPENBLAS_CORETYPE values")
    ap.add_argument("--products-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    m, k, n = args.m, args.k, args.n

    if args.products_only:
        print(best_time(products(m, k, n), args.repeat))
        return

    step, step_acc, state = ours(m, k, n)
    t_prod, t_ours, t_ours_acc = best_times_interleaved(
        [products(m, k, n), step, step_acc], args.repeat)

    x, w, labels, top_diff = make_inputs(m, k, n)
    port = OriginalPort(x, w, labels, top_diff, lam=892.857)
    t_port = best_time(port.step, max(1, args.repeat // 2))
    t0 = time.perf_counter()
    port.backward_literal_rows(args.literal_rows)
    t_literal_bwd = (time.perf_counter() - t0) * m / args.literal_rows
    t_port_fwd = best_time(port.forward, 1)

    # Agreement of ours with the port on the same (already normalised) weights.
    layer, bottom, top = state
    layer.set_state({"iteration": 0})
    layer.blobs[0].data[...] = port.w
    layer.forward(bottom, top)
    port.lam = float(top[1].data[0])
    port.step()
    bottom[0].diff[...] = 0
    layer.backward(top, [True, False], bottom)
    err_top = np.linalg.norm(top[0].data - port.top) / np.linalg.norm(port.top)
    err_bd = np.linalg.norm(bottom[0].diff - port.bottom_diff) / np.linalg.norm(port.bottom_diff)

    mem_ours = peak_bytes(step)
    mem_ours_acc = peak_bytes(step_acc)
    mem_port = peak_bytes(port.step)
    mn = m * n * 4

    print("MarginInnerProduct CPU benchmark: M=%d K=%d N=%d, float32, QUADRUPLE" % (m, k, n))
    print("numpy %s, OPENBLAS_CORETYPE=%s, OPENBLAS_NUM_THREADS=%s, %d CPUs, best of %d "
          "(interleaved)" % (np.__version__, os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
                            os.environ.get("OPENBLAS_NUM_THREADS", "(unset)"),
                            os.cpu_count(), args.repeat))
    print()
    print("| what | time (ms) | ratio |")
    print("|---|---:|---:|")
    print("| three products alone (X.W^T, dY.W, dY^T.X) | %.1f | 1.00 |" % (t_prod * 1e3))
    print("| ours: Forward + Backward | %.1f | %.2f x products |" % (t_ours * 1e3, t_ours / t_prod))
    print("| ours, adding to a non-zero weight diff | %.1f | %.2f x products |"
          % (t_ours_acc * 1e3, t_ours_acc / t_prod))
    print("| port of the original (7 MxN buffers, GEMV per row) | %.1f | %.1f x ours |"
          % (t_port * 1e3, t_port / t_ours))
    print("| literal per-(row, class) backward loop, extrapolated from %d rows, + port forward "
          "| %.0f | %.0f x ours |" % (args.literal_rows, (t_literal_bwd + t_port_fwd) * 1e3,
                                      (t_literal_bwd + t_port_fwd) / t_ours))
    print()
    print("| peak memory allocated in one Forward + Backward | MiB | x (M*N*4 bytes) |")
    print("|---|---:|---:|")
    print("| ours | %.1f | %.2f |" % (mem_ours / 2**20, mem_ours / mn))
    print("| ours, adding to a non-zero weight diff | %.1f | %.2f |"
          % (mem_ours_acc / 2**20, mem_ours_acc / mn))
    print("| port of the original | %.1f | %.2f |" % (mem_port / 2**20, mem_port / mn))
    print()
    print("ours vs port: top rel. error %.2g, bottom diff rel. error %.2g" % (err_top, err_bd))

    if args.coretype:
        print()
        print("| OPENBLAS_CORETYPE | three products (ms) |")
        print("|---|---:|")
        for value, t in coretype_products(args):
            print("| %s | %s |" % (value, t))


if __name__ == "__main__":
    main()
