"""The SphereFace toy experiment on scikit-learn's handwritten digits.

The same small CNN is trained three times with a 2-D (or 3-D) feature layer in front of
the classifier: (1) the original softmax (inner product with bias), (2) the modified
softmax (normalised weights, no bias: MarginInnerProduct SINGLE) and (3) A-Softmax
(angular margin m = 4 with the annealed lambda: MarginInnerProduct QUADRUPLE). Nets and
solver ship in ``pyfacelayers/data/demo``; training goes through the project's own
solver (``get_solver``). The result: a table of test accuracy and figures of the learned
features (on the plane or the sphere) and of the training loss and lambda.

scikit-learn and matplotlib are needed (``pip install 'pyfacelayers[demo]'``).
"""

import math
import os
from collections import namedtuple
import sys
import time

import numpy as np
from google.protobuf import text_format

from .backend import to_numpy
from .proto import caffe_pb2

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo")


# One of the three runs: a key (file names), a title (table, figures), its net file.
Method = namedtuple("Method", "key title net_file")

METHODS = (
    Method("softmax", "softmax", "net_softmax.prototxt"),
    Method("modified", "modified softmax", "net_modified.prototxt"),
    Method("asoftmax", "A-Softmax (m=4)", "net_asoftmax.prototxt"),
)


def require_extras():
    """Import scikit-learn and matplotlib (Agg backend) or say how to install them."""
    missing = []
    for name in ("sklearn", "matplotlib"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise RuntimeError("the demo needs %s: pip install 'pyfacelayers[demo]'"
                           % " and ".join(missing))
    import matplotlib
    matplotlib.use("Agg")


# -- data --------------------------------------------------------------------------
def load_digits_split(seed=0, test_fraction=0.2):
    """scikit-learn's 1,797 8x8 digits, split (stratified, fixed seed) into train and
    test images of shape (N, 1, 8, 8), float32 in [0, 1] (ink 1, background 0), and
    labels as float32 (Caffe's label convention)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed,
        stratify=digits.target)
    return (np.ascontiguousarray(x_train), y_train.astype(np.float32),
            np.ascontiguousarray(x_test), y_test.astype(np.float32))


def shift_images(x, rng, max_shift=1):
    """Each image moved by a random whole number of pixels in [-max_shift, max_shift]
    along each axis, the uncovered border left blank: cheap augmentation for a small
    training set."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    shifts = rng.integers(-max_shift, max_shift + 1, size=(len(x), 2))
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            rows = np.flatnonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            if not len(rows):
                continue
            src = x[rows][..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[rows, ..., max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] = src
    return out


def training_stream(x, y, batch, iters, rng, max_epochs=64, max_shift=1):
    """The training items in the order the net will read them: shuffled epochs one
    after another (each image randomly shifted by up to ``max_shift`` pixels), as many
    as ``iters`` batches need (at most ``max_epochs``; the MemoryData layer cycles
    after that), cut to a multiple of ``batch``."""
    needed = batch * iters
    epochs = max(1, min(max_epochs, math.ceil(needed / len(x))))
    order = np.concatenate([rng.permutation(len(x)) for _ in range(epochs)])
    keep = min(needed, len(order) // batch * batch)
    order = order[:keep]
    images = x[order]
    if max_shift:
        images = shift_images(images, rng, max_shift)
    return np.ascontiguousarray(images), np.ascontiguousarray(y[order])


# -- net and solver files ----------------------------------------------------------
def read_text(path, message):
    with open(path) as f:
        return text_format.Parse(f.read(), message)


def net_param(method, dim, test_batch):
    """The shipped net of ``method`` with the feature layer's num_output set to ``dim``
    and the TEST data layer's batch set to ``test_batch`` (the whole test set)."""
    param = read_text(os.path.join(DATA_DIR, method.net_file), caffe_pb2.NetParameter())
    found = False
    for layer in param.layer:
        if layer.name == "feature":
            layer.inner_product_param.num_output = dim
            found = True
        if layer.type == "MemoryData" and any(r.phase == caffe_pb2.TEST for r in layer.include):
            layer.memory_data_param.batch_size = test_batch
    if not found:
        raise ValueError("%s has no layer named \"feature\"" % method.net_file)
    return param


def solver_param(net_path, iters=None, seed=0):
    """The shipped solver pointing at ``net_path``; with ``iters``, max_iter is set to
    it and the learning-rate step values are scaled to match; ``seed`` is added to its
    random_seed (the weight initialisation)."""
    param = read_text(os.path.join(DATA_DIR, "solver.prototxt"), caffe_pb2.SolverParameter())
    param.net = net_path
    param.random_seed += seed
    if iters is not None:
        scale = iters / param.max_iter
        steps = []
        for value in param.stepvalue:  # kept strictly increasing, as multistep needs
            step = max(1, int(round(value * scale)))
            if not steps or step > steps[-1]:
                steps.append(step)
        del param.stepvalue[:]
        param.stepvalue.extend(steps)
        param.max_iter = iters
    return param


def write_run_files(method, dim, test_batch, iters, directory, seed=0):
    """Write the net and solver of one run into ``directory``; returns the solver path."""
    os.makedirs(directory, exist_ok=True)
    net_path = os.path.join(directory, "%s_%dd_net.prototxt" % (method.key, dim))
    solver_path = os.path.join(directory, "%s_%dd_solver.prototxt" % (method.key, dim))
    header = "# Written by `pyfacelayers demo` from pyfacelayers/data/demo/%s\n"
    with open(net_path, "w") as f:
        f.write(header % method.net_file)
        f.write(text_format.MessageToString(net_param(method, dim, test_batch)))
    with open(solver_path, "w") as f:
        f.write(header % "solver.prototxt")
        f.write(text_format.MessageToString(
            solver_param(os.path.abspath(net_path), iters, seed)))
    return solver_path


# -- progress ----------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr: iteration, loss, lambda, it/s. On a terminal
    it redraws in place a few times a second; elsewhere it prints about ten lines."""

    def __init__(self, label, total, stream=None):
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.last_draw = 0.0
        self.next_line = 0

    def update(self, it, loss, lam=None, final=False):
        now = time.perf_counter()
        if self.tty:
            if not final and now - self.last_draw < 0.2:
                return
        elif not final and it < self.next_line:
            return
        self.last_draw = now
        self.next_line = it + max(1, self.total // 10)
        rate = it / max(now - self.start, 1e-9)
        width = 24
        filled = int(width * it / max(self.total, 1))
        text = "%-18s %6d/%-6d [%s%s] loss %7.4f" % (
            self.label, it, self.total, "#" * filled, "." * (width - filled), loss)
        text += "  lambda %8.3f" % lam if lam is not None else " " * 17
        text += "  %6.0f it/s" % rate
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# -- one run -----------------------------------------------------------------------
class RunResult:
    def __init__(self, method, dim):
        self.method, self.dim = method, dim
        self.losses, self.lambdas = [], []
        self.accuracy = None
        self.features = self.labels = self.weights = None
        self.seconds = 0.0


def train_one(method, data, dim, iters, run_dir, seed=0, quiet=False, max_shift=1):
    """Train ``method`` through the project's solver; returns a RunResult with the loss
    (and lambda) of every iteration, the test accuracy and the test-set features.
    ``seed`` picks the initial weights and the order (and shifts) of the training
    items; the three methods get the same ones."""
    from . import get_solver

    x_train, y_train, x_test, y_test = data
    solver_path = write_run_files(method, dim, len(x_test), iters, run_dir, seed)
    solver = get_solver(solver_path)
    net = solver.net
    batch = net.blobs["data"].shape[0]
    stream_x, stream_y = training_stream(x_train, y_train, batch, iters,
                                         np.random.default_rng(seed), max_shift=max_shift)
    net.set_input_arrays(stream_x, stream_y)

    result = RunResult(method, dim)
    progress = None if quiet else Progress(method.title, iters)
    lambda_blob = net.blobs.get("lambda")

    def after_iteration(solver, loss):
        # The solver calls this after every update with that iteration's loss.
        lam = None
        if lambda_blob is not None:
            lam = float(to_numpy(lambda_blob.data).reshape(-1)[0])
            result.lambdas.append(lam)
        result.losses.append(float(loss))
        if progress:
            progress.update(solver.iter, float(loss), lam, final=solver.iter == iters)

    solver.add_iteration_callback(after_iteration)
    start = time.perf_counter()
    solver.step(iters)
    result.seconds = time.perf_counter() - start

    test_net = solver.test_nets[0]
    test_net.set_input_arrays(x_test, y_test)
    test_net.forward()
    result.accuracy = float(to_numpy(test_net.blobs["accuracy"].data).reshape(-1)[0])
    result.features = to_numpy(test_net.blobs["feature"].data).copy()
    result.labels = y_test.astype(int)
    result.weights = to_numpy(test_net.params["classifier"][0].data).copy()
    return result


# -- figures -----------------------------------------------------------------------
def _colours():
    import matplotlib.pyplot as plt
    return plt.get_cmap("tab10")


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def plot_features_2d(results, path):
    """Row 1: the learned features of the test set on the plane, coloured by digit, with
    each class's weight direction. Row 2: the same features normalised, on the unit
    circle (the angle is all the normalised classifiers look at)."""
    import matplotlib.pyplot as plt

    cmap = _colours()
    fig, axes = plt.subplots(2, len(results), figsize=(4.6 * len(results), 9.2))
    axes = np.asarray(axes).reshape(2, -1)
    for col, res in enumerate(results):
        f, y = res.features, res.labels
        top, bottom = axes[0, col], axes[1, col]
        reach = max(float(np.percentile(np.linalg.norm(f, axis=1), 99)) * 1.1, 1e-6)
        for c in range(10):
            pts = f[y == c]
            top.scatter(pts[:, 0], pts[:, 1], s=7, color=cmap(c), alpha=0.75, label=str(c),
                        linewidths=0)
            u = _unit(pts)
            r = 1.0 + 0.02 * (c - 4.5)  # nudge classes apart so overlaps stay visible
            bottom.scatter(u[:, 0] * r, u[:, 1] * r, s=9, color=cmap(c), alpha=0.6,
                           linewidths=0)
        for c, w in enumerate(_unit(res.weights)):
            top.plot([0, w[0] * reach], [0, w[1] * reach], color=cmap(c), lw=1, ls="--")
            bottom.annotate("", xy=(w[0] * 1.25, w[1] * 1.25), xytext=(0, 0),
                            arrowprops=dict(arrowstyle="->", color=cmap(c), lw=1.2))
            bottom.text(w[0] * 1.35, w[1] * 1.35, str(c), color=cmap(c), ha="center",
                        va="center", fontsize=9, fontweight="bold")
        top.set_xlim(-reach, reach)
        top.set_ylim(-reach, reach)
        top.set_title("%s\ntest accuracy %.1f%%" % (res.method.title, 100 * res.accuracy))
        circle = np.linspace(0, 2 * np.pi, 200)
        bottom.plot(np.cos(circle), np.sin(circle), color="0.7", lw=0.8)
        bottom.set_xlim(-1.5, 1.5)
        bottom.set_ylim(-1.5, 1.5)
        bottom.set_title("normalised features x/|x|, weight directions")
        for ax in (top, bottom):
            ax.set_aspect("equal")
            ax.axhline(0, color="0.85", lw=0.5, zorder=0)
            ax.axvline(0, color="0.85", lw=0.5, zorder=0)
    axes[0, 0].legend(title="digit", fontsize=7, markerscale=2, loc="upper left", ncol=2)
    fig.suptitle("Learned 2-D features of the digits test set (dashed: weight directions)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_features_3d(results, path):
    """The learned 3-D features of the test set: row 1 as they are, row 2 normalised
    onto the unit sphere, with the weight directions."""
    import matplotlib.pyplot as plt

    cmap = _colours()
    fig = plt.figure(figsize=(4.8 * len(results), 9.6))
    for col, res in enumerate(results):
        f, y = res.features, res.labels
        for row, (pts_of, title) in enumerate(((lambda p: p, "features"),
                                               (_unit, "on the unit sphere"))):
            ax = fig.add_subplot(2, len(results), row * len(results) + col + 1,
                                 projection="3d")
            if row == 1:  # a faint wireframe sphere behind the points
                u, v = np.mgrid[0:2 * np.pi:24j, 0:np.pi:12j]
                ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v),
                                  color="0.85", lw=0.4)
            for c in range(10):
                p = pts_of(f[y == c])
                ax.scatter(p[:, 0], p[:, 1], p[:, 2], s=6, color=cmap(c), alpha=0.8,
                           depthshade=False, label=str(c))
            if row == 1:
                for c, w in enumerate(_unit(res.weights)):
                    ax.plot([0, 1.3 * w[0]], [0, 1.3 * w[1]], [0, 1.3 * w[2]],
                            color=cmap(c), lw=1.5)
                ax.set_xlim(-1.2, 1.2)
                ax.set_ylim(-1.2, 1.2)
                ax.set_zlim(-1.2, 1.2)
            ax.set_box_aspect((1, 1, 1))
            ax.set_title("%s\n%s%s" % (res.method.title, title,
                                       ", test accuracy %.1f%%" % (100 * res.accuracy)
                                       if row == 0 else ""))
            ax.tick_params(labelsize=6)
    fig.axes[0].legend(title="digit", fontsize=7, markerscale=2, loc="upper left", ncol=2)
    fig.suptitle("Learned 3-D features of the digits test set")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _smooth(values, window):
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def plot_training(results, path):
    """Training loss of the three runs over iterations (raw and smoothed), and A-Softmax's
    lambda (log scale)."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    fig, (ax_loss, ax_lam) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, res in enumerate(results):
        its = np.arange(1, len(res.losses) + 1)
        window = max(1, len(its) // 50)
        smooth = _smooth(res.losses, window)
        ax_loss.plot(its, res.losses, color=cmap(i), alpha=0.2, lw=0.6)
        ax_loss.plot(its[window - 1:] if window > 1 and len(its) >= window else its, smooth,
                     color=cmap(i), lw=1.6, label=res.method.title)
        if res.lambdas:
            ax_lam.plot(its, res.lambdas, color=cmap(i), lw=1.6, label=res.method.title)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss (SoftmaxWithLoss)")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss (faint: per iteration; bold: moving mean;\n"
                      "A-Softmax's includes its margin)", fontsize=10)
    ax_loss.legend()
    ax_lam.set_xlabel("iteration")
    ax_lam.set_ylabel("lambda")
    ax_lam.set_yscale("log")
    ax_lam.set_title("A-Softmax lambda = max(base (1+gamma iter)^-power, lambda_min)",
                     fontsize=10)
    if any(r.lambdas for r in results):
        ax_lam.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the whole demo ----------------------------------------------------------------
def angles(features, labels, weights):
    """Per test item, in degrees: the angle between its feature and its class's weight
    row, and the smallest angle to another class's weight row (what A-Softmax's
    margin pushes apart)."""
    cos = np.clip(_unit(features) @ _unit(weights).T, -1.0, 1.0)
    theta = np.degrees(np.arccos(cos))
    rows = np.arange(len(labels))
    own = theta[rows, labels]
    theta[rows, labels] = np.inf
    return own, theta.min(axis=1)


def format_table(results):
    fmt = "%-17s %9s %10s %11s %13s %8s"
    lines = [fmt % ("method", "test acc.", "train loss", "angle: own", "nearest other",
                    "time (s)")]
    for res in results:
        tail = res.losses[-max(1, len(res.losses) // 20):]
        own, other = angles(res.features, res.labels, res.weights)
        lines.append("%-17s %8.2f%% %10.4f %11.1f %13.1f %8.1f" % (
            res.method.title, 100 * res.accuracy, float(np.mean(tail)), float(np.mean(own)),
            float(np.mean(other)), res.seconds))
    lines.append("angle: mean over the test set, in degrees, between a feature and its "
                 "class's weight row (own)\nand the closest other class's weight row; "
                 "train loss: mean of the last 5% of iterations\n(A-Softmax's includes "
                 "its margin)")
    return "\n".join(lines)


def blas_threads(count):
    """A context limiting numpy's BLAS to ``count`` threads (threadpoolctl, which comes
    with scikit-learn), or doing nothing when ``count`` is None or it is missing.

    The demo's matrix products are small: a second BLAS thread gains little on an idle
    machine and, when the cores are busy, spinning BLAS threads make training several
    times slower."""
    import contextlib
    if count is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=count, user_api="blas")


def run_demo(out_dir="pyfacelayers-demo", dim=2, iters=None, gpu=False, seed=0,
             methods=METHODS, quiet=False, stdout=None, threads=1):
    """Run the three trainings and write the figures; returns the list of RunResults.

    ``gpu``: train on the GPU when one is usable (else say why and use the CPU).
    ``threads``: BLAS threads on the CPU (None: the library's default)."""
    stdout = stdout or sys.stdout
    require_extras()
    if dim not in (2, 3):
        raise ValueError("--dim must be 2 or 3, got %d" % dim)
    if iters is not None and iters < 1:
        raise ValueError("--iters must be positive, got %d" % iters)
    if iters is None:
        iters = solver_param("").max_iter
    from . import set_mode_cpu, set_mode_gpu

    set_mode_cpu()
    if gpu:
        try:
            set_mode_gpu()
        except RuntimeError as exc:  # no cupy or no device: say why, train on the CPU
            print("--gpu: %s; running on the CPU" % exc, file=sys.stderr)
            gpu = False
    try:
        with blas_threads(None if gpu else threads):
            return _run_demo(out_dir, dim, iters, gpu, seed, methods, quiet, stdout)
    finally:
        set_mode_cpu()


def _run_demo(out_dir, dim, iters, gpu, seed, methods, quiet, stdout):
    os.makedirs(out_dir, exist_ok=True)
    data = load_digits_split(seed)
    print("digits: %d train, %d test images (8x8); feature dimension %d; %d iterations "
          "per run; %s" % (len(data[0]), len(data[2]), dim, iters, "GPU" if gpu else "CPU"),
          file=stdout)
    start = time.perf_counter()
    results = [train_one(m, data, dim, iters, os.path.join(out_dir, "nets"), seed=seed,
                         quiet=quiet) for m in methods]
    total = time.perf_counter() - start

    feature_png = os.path.join(out_dir, "features_%dd.png" % dim)
    training_png = os.path.join(out_dir, "training_%dd.png" % dim)
    (plot_features_2d if dim == 2 else plot_features_3d)(results, feature_png)
    plot_training(results, training_png)
    table = format_table(results)
    table_txt = os.path.join(out_dir, "results_%dd.txt" % dim)
    with open(table_txt, "w") as f:
        f.write(table + "\n")
    print("\n" + table, file=stdout)
    print("\ntraining took %.1f s in all" % total, file=stdout)
    print("figures saved: %s, %s" % (os.path.abspath(feature_png),
                                     os.path.abspath(training_png)), file=stdout)
    print("table saved: %s" % os.path.abspath(table_txt), file=stdout)
    print("nets and solvers used: %s" % os.path.abspath(os.path.join(out_dir, "nets")),
          file=stdout)
    return results
