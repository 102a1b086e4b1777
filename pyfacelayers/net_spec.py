"""pycaffe's net_spec: write Caffe nets in Python and get their NetParameter.

    import pyfacelayers as caffe
    from pyfacelayers import layers as L, params as P

    n = caffe.NetSpec()
    n.data, n.label = L.Input(ntop=2, input_param=dict(shape=[dict(dim=[8, 3, 112, 96]),
                                                               dict(dim=[8])]))
    n.conv1 = L.Convolution(n.data, num_output=64, kernel_size=3, pad=1,
                            weight_filler=dict(type="xavier"))
    n.relu1 = L.PReLU(n.conv1, in_place=True)
    n.pool1 = L.Pooling(n.relu1, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    print(n.to_proto())          # prototxt text; caffe.Net accepts the message too

As in pycaffe: ``L.<Type>(*bottoms, **fields)`` makes a layer of any type string and
returns its top (a tuple for ``ntop`` > 1, the layer itself for ``ntop=0``);
``in_place=True`` reuses the bottom as top. A field whose name ends in ``param`` is set
on the LayerParameter; any other goes into the type's own ``<type>_param`` message when
that has it, else onto the LayerParameter (``loss_weight``, ``include``, ...). Values:
scalars, lists for repeated fields (a scalar given to a repeated field becomes a list of
one), dicts for messages. Names: a top assigned to the NetSpec takes the attribute's
name; a layer takes its first top's name; anything unnamed becomes the type followed
by a counter (``Convolution1``). Beyond pycaffe: enum fields also take the value's name
as a string, and a field that exists nowhere or a value of the wrong type is a
:class:`~pyfacelayers.errors.NetError` naming the layer type and the field.
"""

from collections import Counter, OrderedDict

from .errors import NetError
from .proto import caffe_pb2, is_repeated


# pycaffe raises the built-in exceptions below (a bottom that is not a Top: TypeError;
# an unknown field: AttributeError; a value of the wrong type: TypeError). These are
# those and NetError at once, so scripts catching either way keep working.
class NotATopError(NetError, TypeError):
    """A layer was given, as a bottom, something that is not a top made by a layer."""


class NoSuchFieldError(NetError, AttributeError):
    """A keyword names no field of the layer's ``*_param`` message or LayerParameter."""


class FieldValueError(NetError, TypeError):
    """A field was given a value of the wrong kind (a dict for a scalar, ...)."""

_SUFFIX = "Parameter"


def param_name_dict():
    """{layer type: the prefix of its ``*_param`` field}, e.g. ``'InnerProduct':
    'inner_product'``, from the schema (pycaffe's ``param_name_dict``)."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None \
                and message.name.endswith(_SUFFIX):
            names[message.name[:-len(_SUFFIX)]] = field.name[:-len("_param")]
    return names


_PARAM_NAMES = param_name_dict()


def assign_proto(proto, name, value, where="LayerParameter"):
    """Set field ``name`` of message ``proto`` from a Python value (pycaffe's rules; see
    the module docstring). ``where`` names the message in errors."""
    field = proto.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise NoSuchFieldError("%s has no field %r" % (where, name))
    inner = "%s.%s" % (where, name)
    try:
        if is_repeated(field):
            items = value if isinstance(value, (list, tuple)) else [value]
            container = getattr(proto, name)
            for item in items:
                if field.message_type is not None:
                    _assign_message(container.add(), item, inner)
                else:
                    container.append(_scalar(field, item))
        elif field.message_type is not None:
            _assign_message(getattr(proto, name), value, inner)
        else:
            setattr(proto, name, _scalar(field, value))
    except NetError:
        raise
    except ValueError as exc:
        raise NetError("%s: cannot take %r (%s)" % (inner, value, exc)) from None
    except TypeError as exc:
        raise FieldValueError("%s: cannot take %r (%s)" % (inner, value, exc)) from None


def _assign_message(message, value, where):
    if not isinstance(value, dict):
        raise FieldValueError("%s is a message: give a dict of its fields, got %r"
                              % (where, value))
    for key, item in value.items():
        assign_proto(message, key, item, where)


def _scalar(field, value):
    """An enum may be given by name (``'MAX'``) as well as by number (``P.Pooling.MAX``)."""
    if field.enum_type is not None and isinstance(value, str):
        known = field.enum_type.values_by_name
        if value not in known:
            raise ValueError("%s is not one of %s" % (value, ", ".join(known)))
        return known[value].number
    return value


class Top:
    """One output of a layer made by ``layers.<Type>(...)``."""

    def __init__(self, fn, n):
        self.fn, self.n = fn, n

    def to_proto(self):
        """The NetParameter of everything this top depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, bottoms (Tops) and fields."""

    def __init__(self, type_name, inputs, params):
        for i, bottom in enumerate(inputs):
            if not isinstance(bottom, Top):
                raise NotATopError("%s layer: bottom %d must be a top made by a layer "
                               "(layers.<Type>(...)), got %s" % (type_name, i,
                                                                 type(bottom).__name__))
        self.type_name = type_name
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place and self.ntop != len(self.inputs):
            raise NetError("%s layer: in_place needs as many tops as bottoms (%d), got "
                           "ntop=%d" % (type_name, len(self.inputs), self.ntop))
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _name_of(self, key, names, autonames):
        if key not in names:
            autonames[self.type_name] += 1
            names[key] = "%s%d" % (self.type_name, autonames[self.type_name])
        return names[key]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = caffe_pb2.LayerParameter(type=self.type_name, bottom=bottoms)
        if self.in_place:
            layer.top.extend(bottoms)
        else:
            layer.top.extend(self._name_of(top, names, autonames) for top in self.tops)
        # The layer's name: its own (an ntop=0 layer assigned to a NetSpec), else its
        # first top's, else a generated one.
        if self in names or not self.tops:
            layer.name = self._name_of(self, names, autonames)
        else:
            layer.name = self._name_of(self.tops[0], names, autonames)
        own = _PARAM_NAMES.get(self.type_name)
        where = "%s layer %r" % (self.type_name, layer.name)
        for key, value in self.params.items():
            if not key.endswith("param") and own is not None and \
                    key in getattr(layer, own + "_param").DESCRIPTOR.fields_by_name:
                assign_proto(getattr(layer, own + "_param"), key, value,
                             "%s: %s_param" % (where, own))
            elif key in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name:
                assign_proto(layer, key, value, where)
            else:
                raise NoSuchFieldError("%s: no field %r in %s" % (
                    where, key, ("%s_param or LayerParameter" % own) if own
                    else "LayerParameter (and %s has no *_param message of its own)"
                    % self.type_name))
        layers[self] = layer


class _Layers:
    """``layers.<Type>(*bottoms, **fields)`` for any Caffe type string."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def make(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        make.__name__ = type_name
        return make


class _ParamsOf:
    def __init__(self, type_name):
        self._message = getattr(caffe_pb2, type_name + _SUFFIX, None)
        if self._message is None:
            raise AttributeError("no message %s%s in the Caffe schema" % (type_name, _SUFFIX))

    def __getattr__(self, value_name):
        try:
            return getattr(self._message, value_name)
        except AttributeError:
            raise AttributeError("%s has no value %s" % (self._message.DESCRIPTOR.name,
                                                         value_name)) from None


class _Params:
    """``params.Pooling.MAX`` is ``caffe_pb2.PoolingParameter.MAX`` (enum values)."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _ParamsOf(type_name)


layers = _Layers()
params = _Params()
Layers, Parameters = _Layers, _Params  # pycaffe's class names of the two


class NetSpec:
    """Tops by name: assign ``n.name = layers.Type(...)`` (or ``n["name"] = ...`` for names
    that are not identifiers, such as ``lambda``), then ``n.to_proto()``."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError("this NetSpec has no top %r" % name) from None

    def __setitem__(self, name, value):
        self.__setattr__(name, value)

    def __getitem__(self, name):
        return self.__getattr__(name)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops)

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        names = {value: key for key, value in self.tops.items()}
        autonames = Counter()
        built = OrderedDict()
        for top in self.tops.values():
            top._to_proto(built, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(built.values())
        return net


def to_proto(*tops):
    """The NetParameter that computes ``tops`` (every name generated)."""
    built = OrderedDict()
    autonames = Counter()
    for top in tops:
        top._to_proto(built, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(built.values())
    return net
