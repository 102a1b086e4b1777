"""The SphereFace toy experiment on handwritten digits: scikit-learn's 8x8 digits by
default, or MNIST's 28x28 images read from its own IDX files (``--mnist DIR``).

The same small CNN is trained three times with a 2-D (or 3-D) feature layer in front of
the classifier: (1) the original softmax (inner product with bias), (2) the modified
softmax (normalised weights, no bias: MarginInnerProduct SINGLE) and (3) A-Softmax
(angular margin m = 4 with the annealed lambda: MarginInnerProduct QUADRUPLE). Nets and
solver ship in ``pyfacelayers/data/demo``; training goes through the project's own
solver (``get_solver``). The result: a table of test accuracy and figures of the learned
features (on the plane or the sphere) and of the training loss and lambda.

Two tables make it easy to grow: ``METHODS`` (one row per loss: its net file, written
for the digits) and ``DATASETS`` (one row per data set: how to load it, and for images
of another size the CNN body that replaces the layers in front of "feature" in every
method's net, and its solver).

matplotlib is needed, and scikit-learn for the digits (``pip install
'pyfacelayers[demo]'``).
"""

import logging
import math
import os
from collections import Counter, namedtuple
from contextlib import nullcontext
import sys
import time

import numpy as np
from google.protobuf import text_format

from . import fork_semantics
from .backend import to_numpy
from .proto import caffe_pb2

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo")


# One run: a key (file names), a title (table, figures), its net file, and the fork
# semantics its layers are built with (pyfacelayers.fork_semantics; None: the process's).
Method = namedtuple("Method", "key title net_file semantics", defaults=(None,))

METHODS = (
    Method("softmax", "softmax", "net_softmax.prototxt"),
    Method("modified", "modified softmax", "net_modified.prototxt"),
    Method("asoftmax", "A-Softmax (m=4)", "net_asoftmax.prototxt"),
)

# SphereFace's descendants (the forks' layers: Normalize, InnerProduct normalize,
# LabelSpecificAdd, CosinAddm, Scale), on the same body; selected with --methods.
FAMILY_METHODS = (
    Method("amsoftmax", "AM-Softmax (m=0.35)", "net_amsoftmax.prototxt"),
    # CosinAddm's GPU code turns NaN on 2-D features (net_arcface.prototxt says why).
    Method("arcface", "ArcFace (m=0.3)", "net_arcface.prototxt", "gpu,CosinAddm=cpu"),
)
METHODS_BY_KEY = {m.key: m for m in METHODS + FAMILY_METHODS}
# Named selections for --methods; "sphereface" is the default (the paper's experiment).
METHOD_SETS = {
    "sphereface": ("softmax", "modified", "asoftmax"),
    "family": ("softmax", "asoftmax", "amsoftmax", "arcface"),
    "all": tuple(METHODS_BY_KEY),
}


def select_methods(text):
    """The methods named by ``text``: a name of METHOD_SETS or method keys separated by
    commas (e.g. "softmax,arcface"), in the order given."""
    keys = METHOD_SETS.get(text) or tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in keys if k not in METHODS_BY_KEY]
    if unknown or not keys:
        raise ValueError("--methods: unknown method %s (choose from %s, or one of %s)"
                         % (", ".join(repr(k) for k in unknown) or "(none given)",
                            ", ".join(METHODS_BY_KEY), ", ".join(METHOD_SETS)))
    if len(set(keys)) != len(keys):
        raise ValueError("--methods: a method is named twice in %r" % text)
    return tuple(METHODS_BY_KEY[k] for k in keys)


# One data set: a key, a title, the CNN body file replacing the layers before "feature"
# (None: the method's own net, written for the digits), the solver file, the largest
# TEST batch, the random shift (pixels) of the training images, and the published
# accuracies to print beside ours ({method key: accuracy}).
Dataset = namedtuple("Dataset", "key title body_file solver_file test_batch max_shift "
                                "published")

DIGITS = Dataset("digits", "digits", None, "solver.prototxt", 1000, 1, {})
MNIST = Dataset("mnist", "MNIST", "mnist_body.prototxt", "mnist_solver.prototxt", 500, 0,
                # the A-Softmax MNIST demo that users reproduce
                {"softmax": 0.9775, "modified": 0.9847, "asoftmax": 0.9896})
DATASETS = {d.key: d for d in (DIGITS, MNIST)}


def require_extras(names=("sklearn", "matplotlib")):
    """Import ``names`` (scikit-learn, matplotlib: Agg backend) or say how to install
    them."""
    missing = []
    for name in names:
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


def training_order(count, batch, iters, rng, max_epochs=64):
    """Indices of the training items in the order the net will read them: shuffled
    epochs one after another, as many as ``iters`` batches need (at most
    ``max_epochs``; the MemoryData layer cycles after that), cut to a multiple of
    ``batch``."""
    needed = batch * iters
    epochs = max(1, min(max_epochs, math.ceil(needed / count)))
    order = np.concatenate([rng.permutation(count) for _ in range(epochs)])
    return order[:min(needed, len(order) // batch * batch)]


def gather(x, y, order, rng, max_shift):
    """The items ``order`` picks, each image randomly shifted by up to ``max_shift``
    pixels."""
    images = x[order]
    if max_shift:
        images = shift_images(images, rng, max_shift)
    return np.ascontiguousarray(images), np.ascontiguousarray(y[order])


def training_stream(x, y, batch, iters, rng, max_epochs=64, max_shift=1):
    """The training items (:func:`training_order`), each image randomly shifted by up
    to ``max_shift`` pixels."""
    return gather(x, y, training_order(len(x), batch, iters, rng, max_epochs), rng,
                  max_shift)


# The training stream is fed in pieces of at most this many bytes (MNIST's 4,000
# iterations of 64 would otherwise be 800 MB of images at once).
STREAM_BYTES = 128 << 20


def test_batch_size(count, largest):
    """The largest batch of at most ``largest`` that divides ``count`` (a MemoryData
    layer takes whole batches)."""
    for size in range(min(count, largest), 0, -1):
        if count % size == 0:
            return size
    raise ValueError("no test images")


# -- net and solver files ----------------------------------------------------------
def read_text(path, message):
    with open(path) as f:
        return text_format.Parse(f.read(), message)


def with_body(param, body_file):
    """``param`` with the layers before "feature" replaced by those of ``body_file``."""
    body = read_text(os.path.join(DATA_DIR, body_file), caffe_pb2.NetParameter())
    names = [layer.name for layer in param.layer]
    if "feature" not in names:
        return param  # net_param names the problem
    head = list(param.layer)[names.index("feature"):]
    del param.layer[:]
    param.layer.extend(list(body.layer) + head)
    param.name = "%s_%s" % (body.name, param.name)
    return param


def net_param(method, dim, test_batch, dataset=DIGITS):
    """The shipped net of ``method`` (with ``dataset``'s CNN body, if it has one) with
    the feature layer's num_output set to ``dim`` and the TEST data layer's batch set to
    ``test_batch``."""
    param = read_text(os.path.join(DATA_DIR, method.net_file), caffe_pb2.NetParameter())
    if dataset.body_file:
        param = with_body(param, dataset.body_file)
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


def solver_param(net_path, iters=None, seed=0, solver_file=DIGITS.solver_file):
    """The shipped solver ``solver_file`` pointing at ``net_path``; with ``iters``,
    max_iter is set to it and the learning-rate step values are scaled to match;
    ``seed`` is added to its random_seed (the weight initialisation)."""
    param = read_text(os.path.join(DATA_DIR, solver_file), caffe_pb2.SolverParameter())
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


def write_run_files(method, dim, test_batch, iters, directory, seed=0, dataset=DIGITS):
    """Write the net and solver of one run into ``directory``; returns the solver path."""
    os.makedirs(directory, exist_ok=True)
    prefix = "" if dataset is DIGITS else dataset.key + "_"
    net_path = os.path.join(directory, "%s%s_%dd_net.prototxt" % (prefix, method.key, dim))
    solver_path = os.path.join(directory, "%s%s_%dd_solver.prototxt"
                               % (prefix, method.key, dim))
    header = "# Written by `pyfacelayers demo` from pyfacelayers/data/demo/%s\n"
    with open(net_path, "w") as f:
        f.write(header % (method.net_file + (" and " + dataset.body_file
                                             if dataset.body_file else "")))
        f.write(text_format.MessageToString(net_param(method, dim, test_batch, dataset)))
    with open(solver_path, "w") as f:
        f.write(header % dataset.solver_file)
        f.write(text_format.MessageToString(
            solver_param(os.path.abspath(net_path), iters, seed, dataset.solver_file)))
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
        self.diverged_at = None     # the first iteration whose loss was not finite
        self.features = self.labels = self.weights = None
        self.seconds = 0.0

    def outcome(self):
        """"test accuracy 97.2%", or when the loss went non-finite, where."""
        if self.diverged_at is not None:
            return "diverged (loss not finite from iteration %d)" % self.diverged_at
        return "test accuracy %.1f%%" % (100 * self.accuracy)


class WarningsOncePerRun(logging.Filter):
    """Holds back the project's warnings while a run trains and then logs each distinct
    one once, with its count: a layer that warns on every iteration (CosinAddm's CPU
    code on a cosine float32 rounded above 1) would bury the progress bar."""

    def __init__(self, title):
        super().__init__()
        self.title, self.counts = title, Counter()

    def filter(self, record):
        if record.levelno != logging.WARNING:
            return True
        self.counts[record.getMessage()] += 1
        return False

    def __enter__(self):
        logging.getLogger("pyfacelayers").addFilter(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger("pyfacelayers")
        logger.removeFilter(self)
        for message, count in self.counts.items():
            logger.warning("%s: %s (%d time%s during training)", self.title, message,
                           count, "s" if count > 1 else "")


def train_one(method, data, dim, iters, run_dir, seed=0, quiet=False, max_shift=None,
              dataset=DIGITS):
    """Train ``method`` on ``dataset`` through the project's solver; returns a RunResult
    with the loss (and lambda) of every iteration, the test accuracy and the test-set
    features. ``seed`` picks the initial weights and the order (and shifts) of the
    training items; the methods get the same ones. ``max_shift``: the data set's by
    default."""
    from . import get_solver

    x_train, y_train, x_test, y_test = data
    if max_shift is None:
        max_shift = dataset.max_shift
    test_batch = test_batch_size(len(x_test), dataset.test_batch)
    solver_path = write_run_files(method, dim, test_batch, iters, run_dir, seed, dataset)
    with fork_semantics.using(method.semantics) if method.semantics else nullcontext():
        solver = get_solver(solver_path)
    net = solver.net
    batch = net.blobs["data"].shape[0]
    rng = np.random.default_rng(seed)
    order = training_order(len(x_train), batch, iters, rng)
    # Whole batches per piece; the layer cycles through the order as Caffe's would.
    piece_iters = max(1, STREAM_BYTES // (batch * x_train[0].nbytes))

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
        if result.diverged_at is None and not math.isfinite(float(loss)):
            result.diverged_at = solver.iter
        if progress:
            progress.update(solver.iter, float(loss), lam, final=solver.iter == iters)

    solver.add_iteration_callback(after_iteration)
    start = time.perf_counter()
    done = 0
    with WarningsOncePerRun(method.title):
        while done < iters:
            step = min(piece_iters, iters - done)
            positions = np.arange(done * batch, (done + step) * batch) % len(order)
            net.set_input_arrays(*gather(x_train, y_train, order[positions], rng, max_shift))
            solver.step(step)
            done += step
    result.seconds = time.perf_counter() - start

    test_net = solver.test_nets[0]
    test_net.set_input_arrays(x_test, y_test)
    correct, features = 0.0, []
    for _ in range(len(x_test) // test_batch):
        test_net.forward()
        correct += test_batch * float(to_numpy(test_net.blobs["accuracy"].data).reshape(-1)[0])
        features.append(to_numpy(test_net.blobs["feature"].data).copy())
    result.accuracy = correct / len(x_test)
    result.features = np.concatenate(features)
    result.labels = y_test.astype(int)
    result.weights = to_numpy(test_net.params["classifier"][0].data).copy()
    return result


# -- figures -----------------------------------------------------------------------
def _colours():
    import matplotlib.pyplot as plt
    return plt.get_cmap("tab10")


def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def plot_features_2d(results, path, data_title="digits"):
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
        norms = np.linalg.norm(f, axis=1)
        norms = norms[np.isfinite(norms)]  # a diverged run still gets its figure
        reach = max(float(np.percentile(norms, 99)) * 1.1 if len(norms) else 1.0, 1e-6)
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
        top.set_title("%s\n%s" % (res.method.title, res.outcome()))
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
    fig.suptitle("Learned 2-D features of the %s test set (dashed: weight directions)"
                 % data_title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_features_3d(results, path, data_title="digits"):
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
                                       ", " + res.outcome()
                                       if row == 0 else ""))
            ax.tick_params(labelsize=6)
    fig.axes[0].legend(title="digit", fontsize=7, markerscale=2, loc="upper left", ncol=2)
    fig.suptitle("Learned 3-D features of the %s test set" % data_title)
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


def format_table(results, published=None):
    """The results table; ``published``: {method key: accuracy} to show beside ours."""
    width = max([len("method")] + [len(res.method.title) for res in results])
    fmt = "%-*s %9s %10s %11s %13s %8s"
    lines = [fmt % (width, "method", "test acc.", "train loss", "angle: own",
                    "nearest other", "time (s)") + ("  published" if published else "")]
    for res in results:
        tail = res.losses[-max(1, len(res.losses) // 20):]
        own, other = angles(res.features, res.labels, res.weights)
        # A diverged run's NaN logits would count as correct in Caffe's Accuracy (no
        # logit compares greater than the label's): say so instead of a percentage.
        accuracy = ("%8.2f%%" % (100 * res.accuracy) if res.diverged_at is None
                    else "diverged")
        line = "%-*s %9s %10.4f %11.1f %13.1f %8.1f" % (
            width, res.method.title, accuracy, float(np.mean(tail)), float(np.mean(own)),
            float(np.mean(other)), res.seconds)
        if published:
            known = published.get(res.method.key)
            line += "  %9s" % ("%.2f%%" % (100 * known) if known is not None else "-")
        lines.append(line)
    if published:
        lines.append("published: the A-Softmax MNIST demo's test accuracies (its own CNN "
                     "and schedule)")
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
    if count is None:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=count, user_api="blas")


def run_demo(out_dir="pyfacelayers-demo", dim=2, iters=None, gpu=False, seed=0,
             methods=METHODS, quiet=False, stdout=None, threads=1, mnist=None):
    """Run the trainings (one per method) and write the figures; returns the list of
    RunResults.

    ``gpu``: train on the GPU when one is usable (else say why and use the CPU).
    ``threads``: BLAS threads on the CPU (None: the library's default).
    ``mnist``: a folder with MNIST's IDX files: train on them instead of the digits."""
    stdout = stdout or sys.stdout
    dataset = MNIST if mnist else DIGITS
    require_extras(("matplotlib",) if mnist else ("sklearn", "matplotlib"))
    if dim not in (2, 3):
        raise ValueError("--dim must be 2 or 3, got %d" % dim)
    if iters is not None and iters < 1:
        raise ValueError("--iters must be positive, got %d" % iters)
    if iters is None:
        iters = solver_param("", solver_file=dataset.solver_file).max_iter
    if mnist:
        from .mnist import load_mnist
        data = load_mnist(mnist)  # before training anything: bad files fail at once
    else:
        data = load_digits_split(seed)
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
            return _run_demo(out_dir, dim, iters, gpu, seed, methods, quiet, stdout,
                             dataset, data)
    finally:
        set_mode_cpu()


def _run_demo(out_dir, dim, iters, gpu, seed, methods, quiet, stdout, dataset, data):
    os.makedirs(out_dir, exist_ok=True)
    side = data[0].shape[-1]
    print("%s: %d train, %d test images (%dx%d); feature dimension %d; %d iterations "
          "per run; %s" % (dataset.title, len(data[0]), len(data[2]), side, side, dim, iters,
                           "GPU" if gpu else "CPU"), file=stdout)
    start = time.perf_counter()
    results = [train_one(m, data, dim, iters, os.path.join(out_dir, "nets"), seed=seed,
                         quiet=quiet, dataset=dataset) for m in methods]
    total = time.perf_counter() - start

    # The digits keep their historical names; other data sets add their key.
    tag = "%dd" % dim if dataset is DIGITS else "%s_%dd" % (dataset.key, dim)
    feature_png = os.path.join(out_dir, "features_%s.png" % tag)
    training_png = os.path.join(out_dir, "training_%s.png" % tag)
    (plot_features_2d if dim == 2 else plot_features_3d)(results, feature_png,
                                                         dataset.title)
    plot_training(results, training_png)
    table = format_table(results, dataset.published)
    table_txt = os.path.join(out_dir, "results_%s.txt" % tag)
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
