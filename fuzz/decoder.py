"""Turn fuzz bytes into typed choices (ints, floats, arrays), as atheris's
FuzzedDataProvider does, but with no dependency: the same bytes give the same values
with or without atheris, so a saved input replays anywhere. Past the end of the data
every read returns the smallest choice (0), so short inputs stay valid."""

import struct

import numpy as np

SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, 1e308,
                  float("nan"), float("inf"), float("-inf"), 1e-300, 2.0, 100.0]


class Decoder:
    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def byte(self):
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uint(self, nbytes):
        value = 0
        for _ in range(nbytes):
            value = (value << 8) | self.byte()
        return value

    def int(self, lo, hi):
        """An integer in [lo, hi]."""
        span = hi - lo
        if span <= 0:
            return lo
        nbytes = (span.bit_length() + 7) // 8
        return lo + self.uint(nbytes) % (span + 1)

    def bool(self):
        return bool(self.byte() & 1)

    def choice(self, options):
        return options[self.int(0, len(options) - 1)]

    def small_int(self):
        """Mostly small non-negative sizes, sometimes edge values."""
        b = self.byte()
        if b < 200:
            return b % 6
        return self.choice([0, 1, -1, 7, 33, 100, 2 ** 31 - 1, -2 ** 31, 2 ** 40, -5])

    def float(self):
        b = self.byte()
        if b < 40:
            return SPECIAL_FLOATS[b % len(SPECIAL_FLOATS)]
        raw = bytes(self.byte() for _ in range(4))
        return struct.unpack("<f", raw)[0] if b > 200 else (self.uint(2) - 32768) / 1024.0

    def values(self, count, dtype):
        """``count`` values: a seeded normal fill plus some specials from the data."""
        rng = np.random.default_rng(self.uint(2))
        out = rng.standard_normal(count).astype(dtype, copy=False) if np.dtype(dtype).kind == "f" \
            else rng.integers(-3, 10, count).astype(dtype)
        for _ in range(min(count, self.int(0, 3))):
            i = self.int(0, count - 1)
            if np.dtype(dtype).kind == "f":
                out[i] = self.float()
            else:  # wrap to the dtype as a C cast would
                out[i] = np.array([self.small_int()], np.int64).astype(dtype)[0]
        return out
