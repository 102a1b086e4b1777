"""Benchmark: the margin-family heads (normalised InnerProduct + margin layer), forward +
backward, against the three matrix products of the same sizes.

    PYTHONPATH=. python bench/margin_family.py [--m 256 --k 512 --n 10572 --repeat 5] [--gpu]

For each of LabelSpecificAdd (AM-Softmax, m = 0.35), CosinAddm (ArcFace, m = 0.5) and
CombinedMargin (insightface's 1, 0.3, 0.2), float32, one run of this script times:
  * ours: the head of the published nets, one forward + backward: the InnerProduct with
    ``normalize: true`` (weight rows renormalised in place, X.W^T, top_diff.W and
    top_diff^T.X), then the margin layer on the cosines (its own top, as the nets),
    forward and backward. Features are unit rows (the nets normalise them first). When
    the schema has no InnerProduct ``normalize`` field the bench normalises the weight
    rows itself (MarginInnerProduct's row kernel) and writes the weight gradient
    straight into the diff (the solver's clearing of the diffs is not counted);
  * the peer: the three matrix products alone (numpy/BLAS, or cuBLAS through cupy with
    --gpu), into preallocated outputs: the floor any implementation pays.
The ratio ours / products is the margin family's overhead; target <= 1.3. It is the median,
over the rounds, of the two times measured in the same round.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

# The checkout as a fallback only: an installed (built) package comes first.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MARGINS = (
    ("LabelSpecificAdd", 'label_specific_add_param { bias: -0.35 }'),
    ("CosinAddm", 'cosin_add_m_param { m: 0.5 }'),
    ("CombinedMargin", 'combined_margin_param { m1: 1 m2: 0.3 m3: 0.2 }'),
)


def interleaved_times(fns, repeat, sync):
    """Times of each function over ``repeat`` rounds, the functions run in turn in every
    round, so that load from other processes hits all of them alike. Returns one list of
    times per function."""
    for fn in fns:
        fn()
        sync()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[i].append(time.perf_counter() - t0)
    return times


def inputs(xp, m, k, n):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = rng.standard_normal((n, k)).astype(np.float32)
    labels = rng.integers(0, n, size=m).astype(np.float32)
    top_diff = (rng.standard_normal((m, n)) / m).astype(np.float32)
    return [xp.asarray(a) for a in (x, w, labels, top_diff)]


def has_ip_normalize():
    """Whether the InnerProduct layer implements the fork's ``normalize`` (a probe: its
    forward must leave unit weight rows)."""
    from google.protobuf import text_format

    from pyfacelayers.blob import Blob
    from pyfacelayers.layers import create_layer
    from pyfacelayers.proto import caffe_pb2
    if "normalize" not in caffe_pb2.InnerProductParameter.DESCRIPTOR.fields_by_name:
        return False
    try:
        ip = create_layer(text_format.Parse(
            'name: "probe" type: "InnerProduct" inner_product_param { num_output: 2 '
            'normalize: true bias_term: false }', caffe_pb2.LayerParameter()), dtype=np.float64)
        x, y = Blob((1, 3), dtype=np.float64, xp=np), Blob((), dtype=np.float64, xp=np)
        x.data[...] = 1
        ip.setup([x], [y])
        ip.blobs[0].data[...] = 2
        ip.forward([x], [y])
        return bool(np.allclose((ip.blobs[0].data ** 2).sum(axis=1), 1))
    except Exception:  # a layer that refuses the field: normalise in the bench
        return False


def head(xp, m, k, n, margin_type, margin_text, use_layer):
    """One forward + backward of the normalised InnerProduct and the margin layer
    (``use_layer``: the InnerProduct layer implements ``normalize``)."""
    from google.protobuf import text_format

    from pyfacelayers.blob import Blob
    from pyfacelayers.layers import create_layer
    from pyfacelayers.proto import caffe_pb2

    x, w, labels, top_diff = inputs(xp, m, k, n)
    feat, label = Blob((m, k), xp=xp), Blob((m,), xp=xp)
    feat.data[...] = x
    label.data[...] = labels
    cos, out = Blob((m, n), xp=xp), Blob((m, n), xp=xp)
    if use_layer:
        ip = create_layer(text_format.Parse(
            'name: "fc6" type: "InnerProduct" inner_product_param { num_output: %d '
            'normalize: true bias_term: false }' % n, caffe_pb2.LayerParameter()))
        ip.setup([feat], [cos])
        ip.blobs[0].data[...] = w
        weight = ip.blobs[0]
    else:
        weight = Blob((n, k), xp=xp)
        weight.data[...] = w
    margin = create_layer(text_format.Parse('name: "margin" type: "%s" %s'
                                            % (margin_type, margin_text),
                                            caffe_pb2.LayerParameter()))
    margin.setup([cos, label], [out])
    out.diff[...] = top_diff

    def ip_forward():
        if use_layer:
            ip.forward([feat], [cos])
            return
        # The fork's forward renormalises the weight rows in place (our row kernel).
        if xp is np:
            from pyfacelayers import _C
            _C.margin_normalize_rows(weight.data)
        else:
            from pyfacelayers.gpu import margin
            margin.margin_normalize_rows(weight.data)
        xp.matmul(feat.data, weight.data.T, out=cos.data)

    def ip_backward():
        if use_layer:
            ip.backward([cos], [True], [feat])
            return
        xp.matmul(cos.diff, weight.data, out=feat.diff)
        xp.matmul(cos.diff.T, feat.data, out=weight.diff)

    def step():
        ip_forward()
        margin.forward([cos, label], [out])
        margin.backward([out], [True, False], [cos, label])
        ip_backward()

    return step


def products(xp, m, k, n):
    x, w, _, top_diff = inputs(xp, m, k, n)
    out, bdiff, wdiff = (xp.empty((m, n), np.float32), xp.empty((m, k), np.float32),
                         xp.empty((n, k), np.float32))

    def step():
        xp.matmul(x, w.T, out=out)
        xp.matmul(top_diff, w, out=bdiff)
        xp.matmul(top_diff.T, x, out=wdiff)

    return step


def machine(xp):
    if xp is not np:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        return "GPU %s, cupy %s" % (props["name"].decode(), cupy.__version__)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return "CPU %s (%d cores visible), numpy %s" % (cpu, os.cpu_count() or 0, np.__version__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, default=256)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--n", type=int, default=10572)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gpu", action="store_true", help="run on the GPU (cupy)")
    args = parser.parse_args()

    from pyfacelayers import backend
    use_layer = has_ip_normalize()  # probed in CPU mode
    if args.gpu:
        backend.set_mode_gpu()
        import cupy
        xp = cupy
        sync = cupy.cuda.get_current_stream().synchronize
    else:
        xp = np
        sync = lambda: None  # noqa: E731
    m, k, n = args.m, args.k, args.n
    peer = products(xp, m, k, n)
    steps = [head(xp, m, k, n, margin_type, text, use_layer) for margin_type, text in MARGINS]
    note = ("InnerProduct layer with normalize: true" if use_layer else
            "weight rows normalised by the bench (the InnerProduct layer has no "
            "'normalize' yet)")
    times = interleaved_times([peer] + steps, args.repeat, sync)
    print("margin family heads, forward + backward, float32, M=%d K=%d N=%d, %d rounds"
          % (m, k, n, args.repeat))
    print("machine: %s" % machine(xp))
    print("peer: the three matrix products (X.W^T, top_diff.W, top_diff^T.X), %s"
          % ("cuBLAS via cupy" if args.gpu else "numpy/BLAS"))
    print("head: %s" % note)
    print()
    print("ratio: the median over the rounds of ours / products measured in the same round "
          "(robust to load from other processes); times: the best round")
    print()
    print("| margin layer | ours (ms) | 3 products (ms) | ratio | target |")
    print("|---|---|---|---|---|")
    peer_times = times[0]
    for (margin_type, _), own in zip(MARGINS, times[1:]):
        ratio = float(np.median([a / b for a, b in zip(own, peer_times)]))
        print("| %s | %.2f | %.2f | %.2fx | <= 1.3x %s |"
              % (margin_type, min(own) * 1e3, min(peer_times) * 1e3, ratio,
                 "ok" if ratio <= 1.3 else "MISSED"))


if __name__ == "__main__":
    main()
