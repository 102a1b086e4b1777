"""A small deterministic mutator, so the harnesses run without atheris (the smoke test
and the built-in engine of run.py). Byte-level mutations for every target, plus
text-aware ones for prototxt: numbers swapped for edge values, braces dropped, lines and
blocks duplicated or deleted, names swapped between lines."""

import re

INTERESTING_INTS = [0, 1, -1, 2, 3, 7, 8, 16, 127, 128, 255, 256, 1023, 4096, 65535, 65536,
                    2 ** 31 - 1, 2 ** 31, -2 ** 31, 2 ** 32, 2 ** 63 - 1, -2 ** 63, 2 ** 64,
                    10 ** 30]
INTERESTING_TEXT_NUMBERS = ["0", "1", "-1", "2", "3", "100000", "2147483647", "2147483648",
                            "-2147483648", "4294967296", "9223372036854775807",
                            "18446744073709551616", "1e38", "1e400", "-1e-45", "nan", "inf",
                            "-inf", "0.5", "-0.0", "0x7fffffff", "077", "1.5e"]
TOKENS = ["{", "}", ":", '"', "layer {", "layers {", "input_dim: 1", "input: \"x\"",
          "bottom: \"data\"", "top: \"data\"", "type: \"Python\"", "type: \"Input\"",
          "shape { dim: 1 }", "include { phase: TRAIN }", "type: CONVOLUTION", "\\",
          "\"\\x00\"", "#", "\n", "num_output: 0", "kernel_size: 0", "stride: 0", "pad: -1",
          "dim: -1", "dim: 0", "param { name: \"w\" }", "propagate_down: true",
          "loss_weight: -1", "\xff", "\u2028", "python_param { module: \"os\" }"]

_NUMBER = re.compile(rb"-?\d+(\.\d*)?(e-?\d+)?")
_NAME = re.compile(rb'"[^"\n]*"')


def _byte_ops(data, rng, pool):
    data = bytearray(data)
    op = rng.randrange(9)
    n = len(data)
    if op == 0 and n:  # flip bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1 and n:  # random bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(n)] = rng.randrange(256)
    elif op == 2:  # insert random bytes
        pos = rng.randint(0, n)
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 3 and n:  # delete a range
        pos = rng.randrange(n)
        del data[pos:pos + rng.randint(1, max(1, min(64, n // 4 + 1)))]
    elif op == 4 and n:  # duplicate a range
        pos = rng.randrange(n)
        chunk = data[pos:pos + rng.randint(1, 128)]
        at = rng.randint(0, n)
        data[at:at] = chunk
    elif op == 5 and n:  # truncate
        del data[rng.randint(0, n):]
    elif op == 6 and n:  # overwrite with an interesting little-endian integer
        value = rng.choice(INTERESTING_INTS) & 0xFFFFFFFFFFFFFFFF
        width = rng.choice((1, 2, 4, 8))
        pos = rng.randrange(n)
        data[pos:pos + width] = value.to_bytes(8, "little")[:width]
    elif op == 7 and pool:  # splice with another input
        other = rng.choice(pool)
        if other:
            a, b = rng.randint(0, n), rng.randrange(len(other))
            data = data[:a] + other[b:b + rng.randint(1, 512)] + data[a:]
    elif op == 8 and n:  # varint-ish: set a high bit run (protobuf lengths)
        pos = rng.randrange(n)
        data[pos:pos + 1] = bytes([0xFF] * rng.randint(1, 10))
    return bytes(data)


def _text_ops(data, rng, pool, structured=False):
    # structured: only edits that keep most of the text parseable (numbers, names,
    # tokens, whole lines), so that inputs reach the code behind the parser.
    op = rng.choice((0, 0, 0, 0, 4, 4, 4, 5, 2, 3, 6)) if structured else rng.randrange(8)
    if op == 0:  # a number becomes an edge value
        numbers = list(_NUMBER.finditer(data))
        if numbers:
            m = rng.choice(numbers)
            value = rng.choice(INTERESTING_TEXT_NUMBERS).encode()
            return data[:m.start()] + value + data[m.end():]
    elif op == 1:  # drop or add a brace
        braces = [i for i, c in enumerate(data) if c in b"{}"]
        if braces and rng.random() < 0.7:
            i = rng.choice(braces)
            return data[:i] + data[i + 1:]
        i = rng.randint(0, len(data))
        return data[:i] + rng.choice((b"{", b"}")) + data[i:]
    elif op in (2, 3):  # duplicate / delete lines (whole layers when a block starts there)
        lines = data.split(b"\n")
        i = rng.randrange(len(lines))
        j = min(len(lines), i + rng.choice((1, 1, 2, 5, 20, 60)))
        if op == 2:
            lines[j:j] = lines[i:j]
        else:
            del lines[i:j]
        return b"\n".join(lines)
    elif op == 4:  # swap two quoted names (rewires bottoms/tops, renames layers)
        names = list(_NAME.finditer(data))
        if len(names) >= 2:
            a, b = rng.sample(names, 2)
            if a.start() > b.start():
                a, b = b, a
            return (data[:a.start()] + b.group() + data[a.end():b.start()] + a.group()
                    + data[b.end():])
    elif op == 5:  # insert a token
        i = rng.randint(0, len(data))
        return data[:i] + rng.choice(TOKENS).encode("utf-8") + b"\n" + data[i:]
    elif op == 6 and pool:  # graft lines from another file
        other = rng.choice(pool).split(b"\n")
        lines = data.split(b"\n")
        a = rng.randrange(len(other))
        i = rng.randint(0, len(lines))
        lines[i:i] = other[a:a + rng.randint(1, 40)]
        return b"\n".join(lines)
    return _byte_ops(data, rng, pool)


def mutate(data, rng, pool=(), text=False, max_len=1 << 16):
    """``data`` after 1..4 random mutations (``rng`` is a random.Random). ``text``:
    False (bytes), True (text-aware and byte mutations) or "structured" (text-aware
    edits that mostly keep a prototxt parseable)."""
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        if text == "structured" and rng.random() < 0.95:
            data = _text_ops(data, rng, pool, structured=True)
        elif text and rng.random() < 0.7:
            data = _text_ops(data, rng, pool)
        else:
            data = _byte_ops(data, rng, pool)
    return data[:max_len]
