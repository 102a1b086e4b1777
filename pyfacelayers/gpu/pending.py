"""Device values read back later: small arrays copied to pinned host memory behind the
work already queued, with an event to wait on when (and if) they are needed.

Used by the checks whose verdict is computed on the device (a label out of range, a
zero weight row): in training they are read one iteration later, so that the host never
waits for the device inside an iteration (Layer.defer_checks).
"""

import numpy as np


class HostCopy:
    """Asynchronous copies of small cupy arrays into pinned host memory."""

    def __init__(self, *arrays):
        import cupy
        stream = cupy.cuda.get_current_stream()
        self._host = []
        for array in arrays:
            memory = cupy.cuda.alloc_pinned_memory(max(1, array.nbytes))
            host = np.frombuffer(memory, array.dtype, array.size).reshape(array.shape)
            array.get(stream=stream, out=host)
            self._host.append(host)
        self._event = stream.record()

    def values(self):
        """The host copies (waits for the copies if they are still queued)."""
        self._event.synchronize()
        return self._host
