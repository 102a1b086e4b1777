"""Readers for ../shared/fixtures/caffe-ref: the portable generator of its README
(section 1), its summaries, and weights regenerated from a ``param_recipe``."""

import json

import numpy as np


def portable_values(shape, seed, scale=1.0, offset=0.0, dtype=np.float32):
    """((u - 0.5) * 2) * scale + offset with u = ((i*2654435761 + seed*40503 + 12345) mod 2^32) / 2^32."""
    n = int(np.prod(shape, dtype=np.int64))
    i = np.arange(n, dtype=np.uint64)
    u = ((i * np.uint64(2654435761) + np.uint64(seed * 40503 + 12345)) % np.uint64(2 ** 32))
    u = u.astype(np.float64) / 2.0 ** 32
    values = ((u - 0.5) * 2.0) * scale
    if offset:
        values = values + offset
    return values.astype(dtype).reshape(shape)


def portable_labels(n, seed, num_classes, dtype=np.float32):
    return ((np.arange(n) * 7 + seed) % num_classes).astype(dtype)


def load(path):
    z = np.load(path)
    return z, json.loads(str(z["meta_json"]))


def set_recipe_weights(net, recipe):
    """Fill the net's parameters from a fixture's ``param_recipe`` (checksummed)."""
    layers = net.layer_dict
    for entry in recipe:
        blob = layers[entry["layer"]].blobs[entry["blob_index"]]
        assert list(blob.shape) == list(entry["shape"]), entry
        values = portable_values(entry["shape"], entry["seed"], entry["scale"],
                                 entry.get("offset", 0.0), np.float32)
        assert abs(float(values.astype(np.float64).sum()) - entry["sum_float64"]) <= \
            1e-9 * max(1.0, abs(entry["sum_float64"])) + 1e-6
        blob.data[...] = values.astype(blob.dtype)


def summary(array):
    """[sum, sum of squares] in float64 and the 64 sampled values, as the fixtures store."""
    flat = np.asarray(array, dtype=np.float64).ravel()
    idx = (np.arange(64, dtype=np.int64) * 1000003) % flat.size
    finite = flat[~np.isnan(flat)]
    return np.array([finite.sum(), (finite ** 2).sum()]), flat[idx]


def check_summary(z, prefix, array, tol):
    """Compare an array with a fixture summary ``prefix__{sum_sumsq,idx,vals}``."""
    sums, vals = summary(array)
    want_sums = z[prefix + "__sum_sumsq"]
    assert np.array_equal(z[prefix + "__idx"], (np.arange(64) * 1000003) % np.asarray(array).size)
    # sum of squares is a norm^2: compare it relatively; the plain sum relative to the norm.
    norm = np.sqrt(want_sums[1]) * np.sqrt(np.asarray(array).size)
    assert abs(sums[1] - want_sums[1]) <= tol * want_sums[1] * 2 + 1e-30, (prefix, sums, want_sums)
    assert abs(sums[0] - want_sums[0]) <= tol * max(norm, 1e-30), (prefix, sums, want_sums)
    want_vals = z[prefix + "__vals"].astype(np.float64)
    err = np.linalg.norm(vals - want_vals) / max(np.linalg.norm(want_vals), 1e-30)
    assert err <= tol, (prefix, err)
