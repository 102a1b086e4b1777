"""The Angular-Triplet fork's `semihard` gradient mask and `triplet` weight replacement,
against an independent float64 numpy reference written here."""

import math

import numpy as np
import pytest

from pyfacelayers import _C
from pyfacelayers.blob import Blob
from pyfacelayers.layers.margin_inner_product import MarginInnerProduct

TYPES = ["SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"]
MASK64 = (1 << 64) - 1


# -- the reference ------------------------------------------------------------------------

def psi_closed_form(c, m):
    """(-1)^k cos(m theta) - 2k, k = floor(m theta / pi)."""
    theta = math.acos(max(-1.0, min(1.0, c)))
    k = math.floor(m * theta / math.pi)
    return (-1.0) ** k * math.cos(m * theta) - 2.0 * k


def reference_forward(x, w, labels, m_margin, lam):
    """Plain logits and the margin output, float64, from the closed form of psi."""
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    plain = x @ w.T
    out = plain.copy()
    if m_margin > 1:
        for i, y in enumerate(labels):
            xn = np.linalg.norm(x[i])
            out[i, y] = (xn * psi_closed_form(plain[i, y] / xn, m_margin)
                         + lam * plain[i, y]) / (1 + lam)
    return plain, out


def fork_argmax(row):
    best, index = -2.0, 0
    for j, v in enumerate(row):
        if v > best:
            best, index = v, j
    return index


def reference_keep(out, plain, labels, margin_type):
    """True for the rows whose gradient the semihard mask keeps."""
    keep = []
    for i, y in enumerate(labels):
        easy = y == fork_argmax(out[i])
        hard = not easy and y != fork_argmax(plain[i]) and margin_type != "SINGLE"
        keep.append(not (easy or hard))
    return np.array(keep)


def splitmix64_draw(seed, index):
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return bool(z >> 63)


# -- helpers -------------------------------------------------------------------------------

def build(margin_type, x, w, labels, semihard=False, triplet=False, lam=0.0, seed=None,
          dtype=np.float64, rng=None):
    m, k = x.shape
    layer = MarginInnerProduct.from_args(num_output=w.shape[0], type=margin_type, base=lam,
                                         gamma=0, power=1, semihard=semihard,
                                         triplet=triplet, seed=seed, dtype=dtype, rng=rng)
    bottom, top = [Blob((m, k), dtype), Blob((m,), dtype)], [Blob((1,), dtype)]
    layer.setup(bottom, top)
    layer.blobs[0].data[...] = w
    bottom[0].data[...] = x
    bottom[1].data[...] = labels
    return layer, bottom, top


def forward_backward(layer, bottom, top, top_diff):
    layer.forward(bottom, top)
    top[0].diff[...] = top_diff
    bottom[0].diff[...] = 12345.0
    layer.backward(top, [True, False], bottom)
    return bottom[0].diff.copy()


# -- semihard ------------------------------------------------------------------------------

# W = identity rows, so the plain logits are the features themselves.
HAND_X = np.array([
    [5.0, 1.0, 0.5],    # label 0 wins the margin output too: EASY
    [3.0, 2.5, 0.0],    # label 0 wins the plain logits only: SEMIHARD
    [1.0, 3.0, 0.0],    # label 0 wins neither: HARD
    [-3.0, -4.0, -5.0],  # all outputs <= -2: the scan keeps index 0 = label: "EASY"
    [0.5, 0.2, 4.0],    # label 1, column 2 wins both: HARD
])
HAND_LABELS = np.array([0, 0, 0, 0, 1])


@pytest.mark.parametrize("margin_type", TYPES)
def test_semihard_hand_built_rows(margin_type):
    w = np.eye(3)
    rng = np.random.default_rng(5)
    top_diff = rng.normal(size=(5, 3))
    plain_layer = build(margin_type, HAND_X, w, HAND_LABELS)
    full = forward_backward(*plain_layer, top_diff)
    layer = build(margin_type, HAND_X, w, HAND_LABELS, semihard=True)
    masked = forward_backward(*layer, top_diff)

    m_margin = TYPES.index(margin_type) + 1
    plain, out = reference_forward(HAND_X, w, HAND_LABELS, m_margin, 0.0)
    np.testing.assert_allclose(layer[2][0].data, out, rtol=1e-12, atol=1e-12)
    keep = reference_keep(out, plain, HAND_LABELS, margin_type)
    if margin_type == "SINGLE":
        # No margin: output = plain logits, so row 1 is easy too; hard rows are kept.
        assert keep.tolist() == [False, False, True, False, True]
    else:
        assert keep.tolist() == [False, True, False, False, False]
    np.testing.assert_array_equal(masked[~keep], 0)
    np.testing.assert_array_equal(masked[keep], full[keep])
    assert np.abs(full[~keep]).sum() > 0  # the mask did something


@pytest.mark.parametrize("margin_type", TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_semihard_random_rows_match_reference(margin_type, dtype):
    rng = np.random.default_rng(17)
    m, k, n = 64, 6, 5
    w = rng.normal(size=(n, k))
    x = rng.normal(size=(m, k)) * 3
    labels = rng.integers(0, n, size=m)
    labels[::7] = 2  # duplicate labels
    x, w = x.astype(dtype).astype(np.float64), w.astype(dtype).astype(np.float64)
    top_diff = rng.normal(size=(m, n))
    full = forward_backward(*build(margin_type, x, w, labels, lam=2.0, dtype=dtype), top_diff)
    masked = forward_backward(*build(margin_type, x, w, labels, lam=2.0, dtype=dtype,
                                     semihard=True), top_diff)
    plain, out = reference_forward(x, w, labels, TYPES.index(margin_type) + 1, 2.0)
    keep = reference_keep(out, plain, labels, margin_type)
    assert 0 < keep.sum() < m  # both kinds present
    np.testing.assert_array_equal(masked[~keep], 0)
    np.testing.assert_array_equal(masked[keep], full[keep])


def test_semihard_kernel_counts_rows():
    x = HAND_X.astype(np.float64)
    top = x.copy()  # SINGLE: output = plain logits
    diff = np.ones_like(x)
    zeroed = _C.margin_semihard_mask(diff, top, x[np.arange(5), HAND_LABELS].copy(),
                                     HAND_LABELS.astype(np.float64), 0)
    assert zeroed == 3 and diff[[0, 1, 3]].sum() == 0 and diff[[2, 4]].all()


# -- triplet ---------------------------------------------------------------------------------

def test_draws_match_reference_splitmix64():
    for seed in (0, 1, 12345, (1 << 64) - 1):
        got = _C.triplet_draws(seed, 10, 200)
        assert got.tolist() == [splitmix64_draw(seed, 10 + i) for i in range(200)]


def test_draw_frequency_is_one_half():
    draws = _C.triplet_draws(2024, 0, 200000)
    # 5 standard deviations of a fair coin: 0.5 +- 5 * sqrt(0.25 / 200000).
    assert abs(draws.mean() - 0.5) < 5 * math.sqrt(0.25 / draws.size)
    # No long-range pattern in consecutive pairs either.
    pairs = draws[:-1] & draws[1:]
    assert abs(pairs.mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / pairs.size)


def reference_triplet(w, x, labels, seed, first):
    w = w.copy()
    for i, y in enumerate(labels):
        if splitmix64_draw(seed, first + i):
            w[y] = x[i]
    return w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_triplet_replacement_matches_reference(dtype):
    rng = np.random.default_rng(8)
    m, k, n = 12, 4, 6
    w = rng.normal(size=(n, k)).astype(dtype)
    x = rng.normal(size=(m, k)).astype(dtype)
    labels = np.array([0, 1, 2, 3, 4, 5, 1, 1, 1, 3, 3, 5])  # duplicates: later wins
    top_diff = rng.normal(size=(m, n))
    layer, bottom, top = build("QUADRUPLE", x, w, labels, triplet=True, seed=99, lam=1.0,
                               dtype=dtype)
    layer.blobs[0].diff[...] = 3.0  # even a carried-over diff is cleared
    layer.forward(bottom, top)
    normalised = layer.blobs[0].data.copy()
    top[0].diff[...] = top_diff
    layer.backward(top, [True, False], bottom)
    expected = reference_triplet(normalised, x, labels, 99, 0)
    np.testing.assert_array_equal(layer.blobs[0].data, expected)
    assert not layer.blobs[0].diff.any()
    assert layer.get_state()["triplet_draws"] == m
    # The replaced rows are the raw features (not normalised) and some rows were kept.
    replaced = [i for i in range(n) if not np.array_equal(expected[i], normalised[i])]
    assert 0 < len(replaced) < n
    # Second step: draws continue from index m.
    layer.forward(bottom, top)
    normalised = layer.blobs[0].data.copy()
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(layer.blobs[0].data,
                                  reference_triplet(normalised, x, labels, 99, m))


def test_triplet_duplicate_labels_later_row_wins():
    m, k = 40, 3
    x = np.arange(m * k, dtype=np.float64).reshape(m, k) + 1
    labels = np.zeros(m, int)
    layer, bottom, top = build("SINGLE", x, np.eye(2, k), labels, triplet=True, seed=7)
    layer.forward(bottom, top)
    layer.backward(top, [False, False], bottom)
    last = max(i for i in range(m) if splitmix64_draw(7, i))
    np.testing.assert_array_equal(layer.blobs[0].data[0], x[last])
    np.testing.assert_array_equal(layer.blobs[0].data[1], np.eye(2, k)[1])


def test_triplet_replacement_frequency_through_the_layer():
    m, k = 2000, 2
    x = np.full((m, k), 2.0)
    x[:, 1] = np.arange(m)  # row i is recognisable
    labels = np.arange(m)  # every row its own class
    layer, bottom, top = build("DOUBLE", x, np.ones((m, k)), labels, triplet=True, seed=3)
    layer.forward(bottom, top)
    layer.backward(top, [False, False], bottom)
    replaced = np.all(layer.blobs[0].data == x, axis=1)
    assert abs(replaced.mean() - 0.5) < 5 * math.sqrt(0.25 / m)


def test_triplet_same_seed_same_result_and_state_resume():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    labels = rng.integers(0, 4, size=8)

    def run(layer_args, steps, state=None):
        layer, bottom, top = build("TRIPLE", x, w, labels, triplet=True, **layer_args)
        if state is not None:
            layer.set_state(state)
        for _ in range(steps):
            layer.forward(bottom, top)
            layer.backward(top, [True, False], bottom)
        return layer

    a, b = run({"seed": 42}, 3), run({"seed": 42}, 3)
    np.testing.assert_array_equal(a.blobs[0].data, b.blobs[0].data)
    c = run({"seed": 43}, 3)
    assert not np.array_equal(a.blobs[0].data, c.blobs[0].data)
    # Seed drawn from the layer's rng: the same rng seed gives the same layer.
    d = run({"rng": np.random.default_rng(5)}, 2)
    e = run({"rng": np.random.default_rng(5)}, 2)
    assert d.triplet_seed == e.triplet_seed
    np.testing.assert_array_equal(d.blobs[0].data, e.blobs[0].data)
    # Resume: restoring (iteration, seed, draw counter) continues the same draws.
    one = run({"seed": 42}, 1)
    state = one.get_state()
    assert state == {"iteration": 1, "triplet_seed": 42, "triplet_draws": 8}
    resumed, bottom, top = build("TRIPLE", x, one.blobs[0].data, labels, triplet=True, seed=0)
    resumed.set_state(state)
    for _ in range(2):
        resumed.forward(bottom, top)
        resumed.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(resumed.blobs[0].data, a.blobs[0].data)


def test_triplet_feature_gradient_uses_the_forward_weights():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    labels = rng.integers(0, 3, size=6)
    top_diff = rng.normal(size=(6, 3))
    plain = forward_backward(*build("QUADRUPLE", x, w, labels, lam=4.0), top_diff)
    trip = forward_backward(*build("QUADRUPLE", x, w, labels, lam=4.0, triplet=True, seed=1),
                            top_diff)
    np.testing.assert_array_equal(trip, plain)
