"""Turn the project's ``caffe.proto`` into a serialized FileDescriptorProto.

Why not protoc: the only protoc on PyPI comes with grpcio-tools, whose generated
``_pb2.py`` files check the protobuf runtime's version and break when the two drift.
A FileDescriptorProto is plain protobuf wire data that every runtime version reads,
so we compile the schema ourselves at build time (setup.py calls :func:`compile_file`)
and build the message classes from it at import time with the installed runtime.

The parser covers the proto2 subset the Caffe schema uses: ``syntax``, ``package``,
top-level and nested ``enum``/``message``, and ``optional``/``repeated``/``required``
fields with ``default`` and ``packed`` options.
"""

import re
import sys

from google.protobuf import descriptor_pb2

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": _FDP.TYPE_DOUBLE, "float": _FDP.TYPE_FLOAT,
    "int32": _FDP.TYPE_INT32, "int64": _FDP.TYPE_INT64,
    "uint32": _FDP.TYPE_UINT32, "uint64": _FDP.TYPE_UINT64,
    "sint32": _FDP.TYPE_SINT32, "sint64": _FDP.TYPE_SINT64,
    "fixed32": _FDP.TYPE_FIXED32, "fixed64": _FDP.TYPE_FIXED64,
    "sfixed32": _FDP.TYPE_SFIXED32, "sfixed64": _FDP.TYPE_SFIXED64,
    "bool": _FDP.TYPE_BOOL, "string": _FDP.TYPE_STRING, "bytes": _FDP.TYPE_BYTES,
}
_LABELS = {"optional": _FDP.LABEL_OPTIONAL, "repeated": _FDP.LABEL_REPEATED,
           "required": _FDP.LABEL_REQUIRED}
_TOKEN = re.compile(r'\s*(?:(//[^\n]*)|("(?:[^"\\]|\\.)*")|([A-Za-z_][\w.]*|[-+]?[\d.][\w.+-]*)|(\S))')


class SchemaError(ValueError):
    pass


def _tokenize(text, filename):
    tokens = []
    for lineno, line in enumerate(text.splitlines(), 1):
        pos = 0
        while pos < len(line):
            m = _TOKEN.match(line, pos)
            if not m or m.end() == pos:
                break
            pos = m.end()
            comment, string, word, punct = m.groups()
            if comment is not None:
                break
            tok = string if string is not None else word if word is not None else punct
            if tok is not None:
                tokens.append((tok, lineno))
    return tokens


class _Parser:
    def __init__(self, text, filename):
        self.filename = filename
        self.tokens = _tokenize(text, filename)
        self.pos = 0

    def error(self, what):
        line = self.tokens[min(self.pos, len(self.tokens) - 1)][1] if self.tokens else 0
        raise SchemaError("%s:%d: %s" % (self.filename, line, what))

    def peek(self):
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, expected=None):
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            self.error("expected %r, found %r" % (expected or "a token", tok))
        self.pos += 1
        return tok

    def parse(self, name):
        fdp = descriptor_pb2.FileDescriptorProto(name=name, syntax="proto2")
        while self.peek() is not None:
            tok = self.take()
            if tok == "syntax":
                self.take("=")
                if self.take().strip('"') != "proto2":
                    self.error("only proto2 is supported")
                self.take(";")
            elif tok == "package":
                fdp.package = self.take()
                self.take(";")
            elif tok == "message":
                self.message(fdp.message_type.add())
            elif tok == "enum":
                self.enum(fdp.enum_type.add())
            else:
                self.error("unexpected %r" % tok)
        return fdp

    def enum(self, edp):
        edp.name = self.take()
        self.take("{")
        while self.peek() != "}":
            value = edp.value.add(name=self.take())
            self.take("=")
            value.number = int(self.take())
            self.take(";")
        self.take("}")

    def message(self, mdp):
        mdp.name = self.take()
        self.take("{")
        while self.peek() != "}":
            tok = self.take()
            if tok == "enum":
                self.enum(mdp.enum_type.add())
            elif tok == "message":
                self.message(mdp.nested_type.add())
            elif tok in _LABELS:
                self.field(mdp.field.add(), tok)
            else:
                self.error("unexpected %r in message %s" % (tok, mdp.name))
        self.take("}")

    def field(self, fd, label):
        fd.label = _LABELS[label]
        type_name = self.take()
        fd.name = self.take()
        fd.json_name = _json_name(fd.name)
        self.take("=")
        fd.number = int(self.take())
        if type_name in _SCALARS:
            fd.type = _SCALARS[type_name]
        else:
            fd.type_name = type_name  # resolved once every type is known
        if self.peek() == "[":
            self.take("[")
            while True:
                opt = self.take()
                self.take("=")
                value = self.take()
                if opt == "default":
                    fd.default_value = value[1:-1] if value.startswith('"') else value
                elif opt == "packed":
                    fd.options.packed = value == "true"
                else:
                    self.error("unsupported field option %r" % opt)
                if self.peek() == ",":
                    self.take(",")
                    continue
                break
            self.take("]")
        self.take(";")


def _json_name(name):
    parts = name.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _resolve(fdp):
    """Give every non-scalar field its fully qualified type and message/enum kind."""
    kinds = {}

    def collect(scope, messages, enums):
        for e in enums:
            kinds[scope + "." + e.name] = _FDP.TYPE_ENUM
        for m in messages:
            full = scope + "." + m.name
            kinds[full] = _FDP.TYPE_MESSAGE
            collect(full, m.nested_type, m.enum_type)

    root = "." + fdp.package if fdp.package else ""
    collect(root, fdp.message_type, fdp.enum_type)

    def fix(scope, messages):
        for m in messages:
            full = scope + "." + m.name
            for f in m.field:
                if f.type:
                    continue
                # Search the message's own scope outwards, as protoc does.
                candidates = []
                s = full
                while True:
                    candidates.append(s + "." + f.type_name)
                    if s == root or not s:
                        break
                    s = s.rsplit(".", 1)[0]
                for c in candidates:
                    if c in kinds:
                        f.type_name, f.type = c, kinds[c]
                        break
                else:
                    raise SchemaError("%s.%s: unknown type %r" % (m.name, f.name, f.type_name))
            fix(full, m.nested_type)

    fix(root, fdp.message_type)
    return fdp


def compile_text(text, filename="caffe.proto"):
    """Return the FileDescriptorProto of a proto2 schema text."""
    return _resolve(_Parser(text, filename).parse(filename.rsplit("/", 1)[-1]))


def compile_file(proto_path, out_path):
    with open(proto_path) as f:
        fdp = compile_text(f.read(), proto_path)
    with open(out_path, "wb") as f:
        f.write(fdp.SerializeToString())


if __name__ == "__main__":
    compile_file(sys.argv[1], sys.argv[2])
