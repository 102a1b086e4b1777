"""LFW's ``pairs.txt``: the folds of matched and mismatched image pairs.

The file (view 2 of LFW) starts with a header ``"<folds> <pairs per set>"``, e.g.
``10 300``. Each fold then lists that many matched pairs, one per line as
``name n1 n2`` (two images of one person), followed by as many mismatched pairs as
``name1 n1 name2 n2``. Fields are separated by tabs in the published file; any
whitespace is accepted here. A header of one number (``pairsDevTrain.txt``) is one
fold. Image ``n`` of ``name`` is the file ``name/name_%04d.jpg``; a pair refers to
it by the key ``name/name_%04d`` (no extension), see :func:`image_key`.
"""

from collections import namedtuple

from ..errors import FormatError
from ..fileio.text import read_list_file

Pair = namedtuple("Pair", "left right same fold line")
Pair.__doc__ = """One pair: image keys ``left``/``right``, ``same`` (True for a matched
pair), ``fold`` (0-based) and the 1-based ``line`` of the pairs file it came from."""

DEFAULT_PATTERN = "{name}/{name}_{num:04d}"


def image_key(name, number, pattern=DEFAULT_PATTERN):
    """The key of image ``number`` of person ``name``: ``Abel_Pacheco/Abel_Pacheco_0001``."""
    return pattern.format(name=name, num=number)


class Pairs(list):
    """A list of :class:`Pair` with the header's ``folds`` and ``per_set`` counts."""

    def __init__(self, pairs, folds, per_set, path=None):
        super().__init__(pairs)
        self.folds, self.per_set, self.path = folds, per_set, path


def _positive_int(text, path, line, what):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0 or not text.isdigit():
        raise FormatError("%s must be a positive integer, got %r" % (what, text),
                          path=path, line=line)
    return value


def parse_pairs(text, path="<pairs>", pattern=DEFAULT_PATTERN):
    """Parse the text of a pairs file; errors name ``path`` and the line."""
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1)
             if line.strip()]
    if not lines:
        raise FormatError("empty pairs file; expected a header such as \"10 300\"", path=path)
    number, header = lines[0]
    if len(header) not in (1, 2):
        raise FormatError("header must be \"<folds> <pairs per set>\" (e.g. \"10 300\"), "
                          "got %r" % " ".join(header), path=path, line=number)
    if len(header) == 1:
        folds, per_set = 1, _positive_int(header[0], path, number, "pairs per set")
    else:
        folds = _positive_int(header[0], path, number, "the number of folds")
        per_set = _positive_int(header[1], path, number, "pairs per set")
    body = lines[1:]
    expected = 2 * folds * per_set
    pairs = []
    for index, (number, fields) in enumerate(body[:expected]):
        fold, within = divmod(index, 2 * per_set)
        same = within < per_set
        kind = "matched" if same else "mismatched"
        want = 3 if same else 4
        if len(fields) != want:
            layout = "name n1 n2" if same else "name1 n1 name2 n2"
            raise FormatError("pair %d of fold %d should be a %s pair \"%s\" (%d fields), "
                              "got %d fields: %r" % (within % per_set + 1, fold + 1, kind,
                                                     layout, want, len(fields),
                                                     " ".join(fields)),
                              path=path, line=number)
        if same:
            name_l, name_r = fields[0], fields[0]
            num_l, num_r = fields[1], fields[2]
        else:
            name_l, num_l, name_r, num_r = fields
        num_l = _positive_int(num_l, path, number, "the image number")
        num_r = _positive_int(num_r, path, number, "the image number")
        pairs.append(Pair(image_key(name_l, num_l, pattern), image_key(name_r, num_r, pattern),
                          same, fold, number))
    if len(body) < expected:
        last = body[-1][0] if body else number
        raise FormatError("the header promises %d folds of %d matched + %d mismatched pairs "
                          "(%d lines) but the file ends after %d"
                          % (folds, per_set, per_set, expected, len(body)), path=path, line=last)
    if len(body) > expected:
        raise FormatError("extra line after the %d pairs the header promises: %r"
                          % (expected, " ".join(body[expected][1])), path=path,
                          line=body[expected][0])
    return Pairs(pairs, folds, per_set, path)


def read_pairs(path, pattern=DEFAULT_PATTERN):
    """Read an LFW pairs file into a :class:`Pairs` list."""
    return parse_pairs(read_list_file(path, "pairs file"), str(path), pattern)


def image_keys(pairs):
    """The distinct image keys a pairs list uses, sorted (e.g. to build the image list
    for extract: ``key + ".jpg"`` per line)."""
    return sorted({key for p in pairs for key in (p.left, p.right)})
