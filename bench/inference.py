"""Deploy-net forward on the CPU: pyfacelayers against onnxruntime (on our own ONNX
export of the same net) and OpenCV's dnn module (``cv2.dnn.readNetFromCaffe`` on the
same prototxt and caffemodel), batch 1 and 32, float32, in one run.

    python bench/inference.py [--model sphereface_deploy.prototxt] [--weights x.caffemodel]
                              [--batches 1 32] [--repeats 5] [--threads N] [--shared ../shared]

Without --weights the net gets seeded random weights (written to a temporary caffemodel
for OpenCV). Each timing is the median of --repeats rounds, each round the mean of
enough calls to last about --round-s seconds; the peers are timed interleaved with us
(round by round), so a busy machine slows all of them alike. The last column is the max
relative difference of the output against ours (max |a - b| / max |ours|).

--threads N gives every engine N threads (OMP_NUM_THREADS for oneDNN and OpenBLAS, set
before they load; onnxruntime's intra-op threads; cv2.setNumThreads); default: each
engine's own default (the machine's cores). With --threads 1 the CPU-time column (the
process's CPU seconds per call) is the work itself, a fair figure on a shared machine
where other processes steal the wall clock.
"""

import argparse
import os


def _threads_from_argv():
    """--threads must act before numpy / oneDNN load their thread pools."""
    argv = os.sys.argv
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--threads=") else (
            argv[i + 1] if arg == "--threads" and i + 1 < len(argv) else None)
        if value:
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[name] = value


_threads_from_argv()
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import pyfacelayers as caffe  # noqa: E402
from pyfacelayers.cpu import onednn  # noqa: E402


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Ours:
    name = "pyfacelayers"

    def __init__(self, model, weights):
        self.net = caffe.Net(model, weights, caffe.TEST) if weights else \
            caffe.Net(model, caffe.TEST, seed=0)
        self.input = self.net.inputs[0]
        self.output = self.net.outputs[0]
        self.version = caffe.__version__ if hasattr(caffe, "__version__") else ""
        ok, why = onednn.available()
        self.engine = "oneDNN %d.%d.%d" % onednn.library().version if ok and \
            os.environ.get("PYFACELAYERS_CONV_ENGINE", "auto") != "caffe" else "im2col"

    def prepare(self, batch):
        shape = (batch,) + tuple(self.net.blobs[self.input].shape[1:])
        self.net.blobs[self.input].reshape(*shape)
        self.net.reshape()

    def run(self, x):
        return self.net.forward(**{self.input: x})[self.output]


class OnnxRuntime:
    def __init__(self, ours, folder):
        import onnxruntime
        from pyfacelayers import onnx_export
        path = os.path.join(folder, "net.onnx")
        onnx_export.export(ours.net, path)
        options = onnxruntime.SessionOptions()
        if THREADS["n"]:
            options.intra_op_num_threads = THREADS["n"]
            options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(path, options,
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = ours.output
        self.name = "onnxruntime %s (our ONNX export)" % onnxruntime.__version__

    def prepare(self, batch):
        pass

    def run(self, x):
        return self.session.run([self.output], {self.input: x})[0]


class OpenCV:
    def __init__(self, model, weights, ours):
        import cv2
        self.cv2 = cv2
        if THREADS["n"]:
            cv2.setNumThreads(THREADS["n"])
        self.net = cv2.dnn.readNetFromCaffe(model, weights)
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.output = ours.output
        self.name = "OpenCV dnn %s (readNetFromCaffe)" % cv2.__version__

    def prepare(self, batch):
        pass

    def run(self, x):
        self.net.setInput(x)
        return self.net.forward(self.output)


THREADS = {"n": None}


def timed(run, x, round_s):
    """(wall, CPU) seconds per call, means over enough calls to last ``round_s``."""
    start, cpu = time.perf_counter(), time.process_time()
    calls = 0
    while True:
        run(x)
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= round_s:
            return elapsed / calls, (time.process_time() - cpu) / calls


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "shared"))
    ap.add_argument("--model", default=None, help="deploy prototxt (default: SphereFace-20)")
    ap.add_argument("--weights", default=None, help="caffemodel (default: seeded random)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--round-s", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    THREADS["n"] = args.threads
    model = args.model or os.path.join(args.shared, "nets", "sphereface",
                                       "sphereface_deploy.prototxt")
    with tempfile.TemporaryDirectory() as folder:
        ours = Ours(model, args.weights)
        weights = args.weights
        if weights is None:
            weights = os.path.join(folder, "random.caffemodel")
            ours.net.save(weights)
        runners = [ours]
        for make in (lambda: OnnxRuntime(ours, folder), lambda: OpenCV(model, weights, ours)):
            try:
                runners.append(make())
            except ImportError as exc:
                print("skipped a peer: %s" % exc)
        print("%s forward (TEST), float32; %s, %d CPU(s), %s thread(s) each; load average "
              "%.1f; pyfacelayers on %s" % (os.path.basename(model), cpu_name(),
                                           os.cpu_count(), args.threads or "default",
                                           os.getloadavg()[0], ours.engine))
        rng = np.random.default_rng(0)
        for batch in args.batches:
            shape = (batch,) + tuple(ours.net.blobs[ours.input].shape[1:])
            x = rng.standard_normal(shape).astype(np.float32)
            outputs, times = {}, {r.name: [] for r in runners}
            for r in runners:
                r.prepare(batch)
                outputs[r.name] = np.array(r.run(x), copy=True).reshape(batch, -1)
            for _ in range(args.repeats):
                for r in runners:
                    times[r.name].append(timed(r.run, x, args.round_s))
            mine = statistics.median(w for w, _ in times[ours.name])
            mine_cpu = statistics.median(c for _, c in times[ours.name])
            ref = outputs[ours.name]
            print("\nbatch %d" % batch)
            print("%-40s %9s %9s %9s %9s %9s %12s" % (
                "", "wall ms", "images/s", "ours/peer", "CPU ms", "ours/peer", "max rel diff"))
            for r in runners:
                t = statistics.median(w for w, _ in times[r.name])
                c = statistics.median(c for _, c in times[r.name])
                diff = np.abs(outputs[r.name] - ref).max() / max(np.abs(ref).max(), 1e-30)
                print("%-40s %9.2f %9.1f %9.2f %9.2f %9.2f %12.2e" % (
                    r.name, 1e3 * t, batch / t, mine / t, 1e3 * c, mine_cpu / c, diff))


if __name__ == "__main__":
    main()
