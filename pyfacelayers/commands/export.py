"""``pyfacelayers export``: write a deploy net and its weights as an ONNX model.

Every layer of the TEST net becomes ONNX operators (opset 13, float32), so the model
runs in onnxruntime, TensorRT, OpenVINO and others; the inputs get a free batch size
unless --fixed-batch. Needs the onnx package (pip install 'pyfacelayers[onnx]')."""


def register(subparsers):
    p = subparsers.add_parser("export", help="write a deploy net with its weights as ONNX",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--model", required=True, help="the deploy .prototxt")
    p.add_argument("--weights", required=True, help="its .caffemodel (or .caffemodel.h5)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--fixed-batch", action="store_true",
                   help="keep the prototxt's batch size instead of a free one")
    p.set_defaults(func=run)


def run(args, out=print):
    from ..net import TEST, Net
    from ..onnx_export import OPSET, export
    net = Net(args.model, TEST, weights=args.weights)
    model = export(net, args.out, dynamic_batch=not args.fixed_batch)
    shapes = lambda values: ", ".join(  # noqa: E731
        "%s %s" % (v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in values)
    out("Wrote %s (ONNX opset %d): inputs %s; outputs %s"
        % (args.out, OPSET, shapes(model.graph.input), shapes(model.graph.output)))
    return 0
