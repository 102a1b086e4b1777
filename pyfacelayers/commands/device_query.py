"""``pyfacelayers device_query``: the properties of one or more GPUs, as
``caffe device_query``.

Prints the lines Caffe prints for each device (same labels and order), then whether
cuDNN can be loaded for ``engine: CUDNN`` convolutions."""

from .. import backend

# (Caffe's label, the cudaDeviceProp field, the cudaDeviceAttr number used when the
# field is missing: CUDA 13 dropped clockRate, deviceOverlap, kernelExecTimeoutEnabled
# from the struct)
FIELDS = (
    ("Major revision number", "major", None),
    ("Minor revision number", "minor", None),
    ("Name", "name", None),
    ("Total global memory", "totalGlobalMem", None),
    ("Total shared memory per block", "sharedMemPerBlock", None),
    ("Total registers per block", "regsPerBlock", None),
    ("Warp size", "warpSize", None),
    ("Maximum memory pitch", "memPitch", None),
    ("Maximum threads per block", "maxThreadsPerBlock", None),
    ("Maximum dimension of block", "maxThreadsDim", None),
    ("Maximum dimension of grid", "maxGridSize", None),
    ("Clock rate", "clockRate", 13),
    ("Total constant memory", "totalConstMem", None),
    ("Texture alignment", "textureAlignment", None),
    ("Concurrent copy and execution", "deviceOverlap", 15),
    ("Number of multiprocessors", "multiProcessorCount", None),
    ("Kernel execution timeout", "kernelExecTimeoutEnabled", 17),
)
YES_NO = ("deviceOverlap", "kernelExecTimeoutEnabled")
LABEL_WIDTH = 30  # Caffe pads "Total shared memory per block: " to align the values


def register(subparsers):
    p = subparsers.add_parser("device_query", help="show GPU properties (as caffe "
                              "device_query)", description=__doc__.split("\n\n")[1])
    p.add_argument("--gpu", metavar="ID", required=True,
                   help="device id, several separated by commas, or 'all'")
    p.set_defaults(func=run)


def _runtime():
    try:
        return backend.import_cupy().cuda.runtime
    except RuntimeError as exc:  # no cupy or no device: the CLI's one-line error
        raise ValueError(str(exc)) from None


def device_ids(text, count):
    """The ids of ``--gpu`` (``all``, or ids separated by commas), each checked."""
    if text.strip().lower() == "all":
        return list(range(count))
    ids = []
    for part in text.split(","):
        try:
            device = int(part)
        except ValueError:
            raise ValueError("--gpu takes device ids separated by commas or 'all', got %r"
                             % text) from None
        if not 0 <= device < count:
            raise ValueError("--gpu %d: no such device (this machine has %d: 0 to %d)"
                             % (device, count, count - 1))
        ids.append(device)
    return ids


def _value(runtime, props, device, field, attribute):
    value = props.get(field)
    if value is None and attribute is not None:
        value = runtime.deviceGetAttribute(attribute, device)
    if value is None:
        return "n/a"
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace").rstrip("\0")
    if field in YES_NO:
        return "Yes" if value else "No"
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return str(value)


def run(args, out=print, runtime=None):
    runtime = runtime or _runtime()
    count = runtime.getDeviceCount()
    if count == 0:
        raise ValueError("no CUDA device found")
    out("Querying GPUs %s" % args.gpu)
    for device in device_ids(args.gpu, count):
        props = runtime.getDeviceProperties(device)
        out("%-*s %d" % (LABEL_WIDTH, "Device id:", device))
        for label, field, attribute in FIELDS:
            out("%-*s %s" % (LABEL_WIDTH, label + ":",
                             _value(runtime, props, device, field, attribute)))
    from ..gpu import cudnn
    ok, why = cudnn.available()
    out("%-*s %s" % (LABEL_WIDTH, "cuDNN:", why if ok else "not available (%s)" % why))
    return 0
