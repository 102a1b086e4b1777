"""Running a net one layer at a time into the reference format (what the dump script
does with pycaffe, done here with pyfacelayers)."""

from collections import OrderedDict

import numpy as np

from .. import backend
from .reference import CompareError, make_key

# -- running ----------------------------------------------------------------------------
def _np(array):
    return np.array(backend.to_numpy(array), copy=True)


def net_structure(net):
    """Per layer name/type/bottoms/tops, in net order (Split layers included)."""
    return [{"name": name, "type": net.layers[i].type,
             "bottoms": list(net.bottom_names[name]), "tops": list(net.top_names[name])}
            for i, name in enumerate(net._layer_names)]


def writers_and_readers(layers):
    """blob -> indices of the layers that write it (as a top), in order; and blob ->
    indices of the layers that read it (as a bottom)."""
    writers, readers = {}, {}
    for i, layer in enumerate(layers):
        for t in layer["tops"]:
            writers.setdefault(t, []).append(i)
        for b in layer["bottoms"]:
            readers.setdefault(b, []).append(i)
    return writers, readers


def capture(net, inputs, backward=False, top_diff=None):
    """Run ``net`` one layer at a time and return (arrays, info) in the reference
    format (the same procedure as tools/dump_caffe_blobs.py)."""
    layers = net_structure(net)
    writers, readers = writers_and_readers(layers)
    arrays = OrderedDict()
    for name, value in inputs.items():
        value = np.asarray(value)
        blob = net.blobs[name]
        blob.reshape(*value.shape)
        blob.data[...] = blob.xp.asarray(value, dtype=blob.dtype)
        arrays["input/" + name] = value.copy()
    margin = [(layer["name"], net.layers[i]) for i, layer in enumerate(layers)
              if layer["type"] == "MarginInnerProduct"]
    loss = 0.0
    for i, layer in enumerate(layers):
        loss += net.forward_from_to(i, i)
        for t in layer["tops"]:
            if writers[t][-1] != i:
                arrays[make_key("data", t, layer["name"])] = _np(net.blobs[t].data)
    for name, blob in net.blobs.items():
        arrays["data/" + name] = _np(blob.data)
    for name, params in net.params.items():
        for k, p in enumerate(params):
            arrays[make_key("param", name, k)] = _np(p.data)
    for name, layer in margin:
        if layer.lambda_ is not None:
            arrays["lambda/" + name] = np.array([layer.lambda_], dtype=net.dtype)
        arrays["iter/" + name] = np.array(layer.iteration, dtype=np.int64)
    backward_from = None
    if backward:
        backward_from = _set_top_diffs(net, top_diff)
        for params in net.params.values():
            for p in params:
                p.diff[...] = 0
        for i in range(len(layers) - 1, -1, -1):
            net.backward_from_to(i, i)
            for b in layers[i]["bottoms"]:
                if readers[b][0] != i:
                    arrays[make_key("diff", b, layers[i]["name"])] = _np(net.blobs[b].diff)
        for name, blob in net.blobs.items():
            arrays["diff/" + name] = _np(blob.diff)
        for name, params in net.params.items():
            for k, p in enumerate(params):
                arrays[make_key("param_diff", name, k)] = _np(p.diff)
    info = {"layers": layers, "blob_order": list(net.blobs), "inputs": list(net.inputs),
            "outputs": list(net.outputs), "loss": loss, "backward": bool(backward),
            "backward_from": backward_from, "net_name": net.name,
            "force_backward": bool(net._param.force_backward),
            "dtype": np.dtype(net.dtype).name}
    return arrays, info


def expected_keys(net, backward):
    """Every key :func:`capture` writes for this net (without running it)."""
    layers = net_structure(net)
    writers, readers = writers_and_readers(layers)
    keys = {"input/" + n for n in net.inputs} | {"data/" + b for b in net.blobs}
    for i, layer in enumerate(layers):
        keys |= {make_key("data", t, layer["name"]) for t in layer["tops"]
                 if writers[t][-1] != i}
        if layer["type"] == "MarginInnerProduct":
            keys |= {"lambda/" + layer["name"], "iter/" + layer["name"]}
        if backward:
            keys |= {make_key("diff", b, layer["name"]) for b in layer["bottoms"]
                     if readers[b][0] != i}
    for name, params in net.params.items():
        keys |= {make_key("param", name, k) for k in range(len(params))}
        if backward:
            keys |= {make_key("param_diff", name, k) for k in range(len(params))}
    if backward:
        keys |= {"diff/" + b for b in net.blobs}
    return keys


def _set_top_diffs(net, top_diff):
    has_loss = any(w for w in net.blob_loss_weights.values())
    if top_diff:
        for name, value in top_diff.items():
            if name not in net.blobs:
                raise CompareError('top diff for "%s": no such blob in the net' % name)
            blob = net.blobs[name]
            value = np.asarray(value)
            if tuple(value.shape) != tuple(blob.shape):
                raise CompareError('top diff for "%s" has shape %s, the blob has %s'
                                   % (name, value.shape, blob.shape))
            blob.diff[...] = blob.xp.asarray(value, dtype=blob.dtype)
        return "top_diff"
    if not has_loss:
        raise CompareError("Backward needs a loss or a top diff: the net has no loss layer;"
                           " give --top-diff FILE.npz (one array per output blob: %s)"
                           % ", ".join(net.outputs))
    return "loss"
