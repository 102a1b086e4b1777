"""GPU twins of the MarginInnerProduct kernels of ``pyfacelayers._C`` (same names,
arguments and results; cupy arrays). The layer picks this module for cupy arrays
(``layers/margin_inner_product.py``, ``_kernels``).

The labels are validated by the layer before any kernel runs (and every CUDA
kernel skips a row whose label is outside [0, N), so nothing is indexed out of
bounds even if called directly with bad labels).
"""

from . import check, cuda_module, ptr, stream


def _is_double(dtype):
    return dtype.itemsize == 8


def _matrix(array, what, dtype=None):
    dt = check(array, what, dtype)
    if array.ndim != 2:
        raise ValueError("%s: expected a 2-D array, got shape %s" % (what, array.shape))
    return dt


def margin_normalize_rows(weight, labels=None, wait=True):
    """Scale every row of the (N, K) weight to unit norm in place; ValueError naming
    the first zero-norm row (the weight is then unchanged).

    With ``labels`` (M,) the labels are checked too, in the same kernels: a label that
    is not an integer in [0, N) raises a ValueError naming it, and the weight is left
    unchanged (as the CPU layer's order).

    ``wait=False`` does not wait for the device: the verdict is copied to pinned host
    memory behind the kernels and a :class:`PendingCheck` is returned, whose
    ``raise_if_bad()`` gives the same error later (the training loop asks at the next
    forward, so the host never waits for the device inside an iteration)."""
    import cupy
    dt = _matrix(weight, "margin_normalize_rows: weight")
    n, k = weight.shape
    if n > 0 and k == 0:  # as the CPU kernel: before sizing buffers by n
        raise ValueError("weight row 0 has zero norm (cannot be normalised): the weight "
                         "has no columns")
    m = 0
    if labels is not None:
        check(labels, "margin_normalize_rows: labels", dt)
        if labels.ndim != 1:
            raise ValueError("margin_normalize_rows: labels must be 1-D, got shape %s"
                             % (labels.shape,))
        m = labels.shape[0]
    if n == 0 or k == 0:
        return None if wait else PendingCheck(None, None, m, n)
    inv_norm = cupy.empty(n, dtype=dt)
    flags = cupy.empty(2, dtype=cupy.int32)  # set by the kernel call
    cuda_module().margin_normalize_rows(ptr(weight), ptr(inv_norm), ptr(flags), n, k,
                                        ptr(labels) if m else 0, m, _is_double(dt), stream())
    pending = PendingCheck(flags, labels if m else None, m, n, copy=not wait)
    if wait:
        pending.raise_if_bad()
        return None
    return pending


class PendingCheck:
    """The verdict of the weight-norm and label checks of one forward: the two flags
    (and the labels, to name a bad one), read now or (``copy``) from pinned host copies
    made behind the kernels. ``raise_if_bad()`` raises the check's ValueError."""

    def __init__(self, flags, labels, m, n, copy=False):
        from .pending import HostCopy
        self.m, self.n = m, n
        self._flags, self._labels, self._copy = flags, labels, None
        if flags is not None and copy:
            self._copy = HostCopy(flags, *([labels] if labels is not None else []))

    def raise_if_bad(self):
        if self._flags is None:
            return
        if self._copy is not None:
            flags, *labels = self._copy.values()
        else:
            flags, labels = self._flags.get(), [self._labels]
        bad_label, bad_row = (int(v) for v in flags)
        if bad_label < self.m:
            raise ValueError("label %d is %r, expected an integer in [0, %d) (num_output)"
                             % (bad_label, float(labels[0][bad_label]), self.n))
        if bad_row < self.n:
            raise ValueError("weight row %d has zero norm (cannot be normalised)" % bad_row)


def first_bad_label(labels, n):
    """Index of the first label that is not an integer in [0, n) (NaN included), or -1:
    one kernel and one transfer (the numpy-style test takes several of each)."""
    import cupy
    dt = check(labels, "labels")
    if labels.ndim != 1:
        raise ValueError("labels: expected a 1-D array, got shape %s" % (labels.shape,))
    m = labels.shape[0]
    bad = cupy.empty(1, dtype=cupy.int32)
    cuda_module().margin_check_labels(ptr(labels), ptr(bad), m, int(n), _is_double(dt),
                                      stream())
    index = int(bad[0])
    return index if index < m else -1


def margin_forward(top, x, labels, lambda_, type, x_norm, cos_y, logit_y):
    """Given top = X.W^T (M, N), write each label column's margin output in place and
    fill x_norm, cos_y and logit_y (M,)."""
    dt = _matrix(top, "margin_forward: top")
    m, n = top.shape
    _matrix(x, "margin_forward: features", dt)
    if x.shape[0] != m:
        raise ValueError("margin_forward: features have %d rows, top has %d" % (x.shape[0], m))
    k = x.shape[1]
    check(labels, "margin_forward: labels", dt, (m,))
    for a, what in ((x_norm, "x_norm"), (cos_y, "cos_y"), (logit_y, "logit_y")):
        check(a, "margin_forward: " + what, dt, (m,))
    cuda_module().margin_forward(ptr(top), ptr(x), ptr(labels), ptr(x_norm), ptr(cos_y),
                                 ptr(logit_y), m, n, k, float(lambda_), int(type),
                                 _is_double(dt), stream())


def margin_backward(bottom_diff, top_diff, x, weight, labels, x_norm, cos_y, lambda_, type,
                    normalized=True):
    """Given bottom_diff = top_diff.W (M, K), add the label column's correction."""
    dt = _matrix(top_diff, "margin_backward: top_diff")
    m, n = top_diff.shape
    _matrix(weight, "margin_backward: weight", dt)
    if weight.shape[0] != n:
        raise ValueError("margin_backward: weight has %d rows, top_diff has %d columns"
                         % (weight.shape[0], n))
    k = weight.shape[1]
    check(bottom_diff, "margin_backward: bottom_diff", dt, (m, k))
    check(x, "margin_backward: features", dt, (m, k))
    check(labels, "margin_backward: labels", dt, (m,))
    check(x_norm, "margin_backward: x_norm", dt, (m,))
    check(cos_y, "margin_backward: cos_y", dt, (m,))
    cuda_module().margin_backward(ptr(bottom_diff), ptr(top_diff), ptr(x), ptr(weight),
                                  ptr(labels), ptr(x_norm), ptr(cos_y), m, n, k,
                                  float(lambda_), int(type), bool(normalized), _is_double(dt),
                                  stream())


def margin_semihard_mask(bottom_diff, top, logit_y, labels, type):
    """Zero the easy (and, unless SINGLE, hard) rows of the feature gradient; returns
    the number of rows zeroed."""
    import cupy
    dt = _matrix(top, "margin_semihard_mask: top")
    m, n = top.shape
    _matrix(bottom_diff, "margin_semihard_mask: bottom_diff", dt)
    if bottom_diff.shape[0] != m:
        raise ValueError("margin_semihard_mask: bottom_diff has %d rows, top has %d"
                         % (bottom_diff.shape[0], m))
    k = bottom_diff.shape[1]
    check(logit_y, "margin_semihard_mask: logit_y", dt, (m,))
    check(labels, "margin_semihard_mask: labels", dt, (m,))
    zeroed = cupy.zeros(max(m, 1), dtype=cupy.int32)
    cuda_module().margin_semihard_mask(ptr(bottom_diff), ptr(top), ptr(logit_y), ptr(labels),
                                       ptr(zeroed), m, n, k, int(type), _is_double(dt),
                                       stream())
    return int(zeroed.sum())


def margin_triplet_replace(weight, x, labels, seed, first_draw):
    """For each row i in order, if draw first_draw + i of seed is true,
    weight[labels[i]] = x[i] (later rows win); returns the number of true draws."""
    dt = _matrix(weight, "margin_triplet_replace: weight")
    n, k = weight.shape
    _matrix(x, "margin_triplet_replace: features", dt)
    if x.shape[1] != k:
        raise ValueError("margin_triplet_replace: features have %d columns, weight has %d"
                         % (x.shape[1], k))
    m = x.shape[0]
    check(labels, "margin_triplet_replace: labels", dt, (m,))
    return cuda_module().margin_triplet_replace(ptr(weight), ptr(x), ptr(labels), m, n, k,
                                                int(seed) % (1 << 64),
                                                int(first_draw) % (1 << 64), _is_double(dt),
                                                stream())


def triplet_draws(seed, first_draw, count):
    """The triplet draws as a numpy bool array (host code, as the CPU module's)."""
    from .. import _C
    return _C.triplet_draws(seed, first_draw, count)


def add_weight_grad(weight_diff, top_diff, x):
    """weight_diff += top_diff^T . X with cuBLAS adding into the diff (beta = 1): no
    N x K temporary and no test of the diff for zeros."""
    import cupy.cublas
    dt = _matrix(weight_diff, "weight diff")
    _matrix(top_diff, "top diff", dt)
    _matrix(x, "features", dt)
    if top_diff.shape[1] != weight_diff.shape[0] or x.shape[1] != weight_diff.shape[1] or \
            top_diff.shape[0] != x.shape[0]:
        raise ValueError("add_weight_grad: shapes %s^T . %s do not give %s"
                         % (top_diff.shape, x.shape, weight_diff.shape))
    cupy.cublas.gemm("T", "N", top_diff, x, out=weight_diff, alpha=1.0, beta=1.0)
