"""Host batches onto the GPU without making the host wait: the data layers' seam
("batch ready as host arrays" -> "on the device").

A plain ``cupy.asarray`` of a numpy batch copies from pageable memory, which blocks the
host until every kernel queued before it has run: the host could never prepare
iteration i+1 while the GPU computes iteration i. Here each batch goes

    host array -> pinned staging buffer (host memcpy)
               -> device staging buffer, on a side stream (overlaps the compute stream)
               -> the top blob, a device-to-device copy queued on the compute stream
                  after an event that says the side copy is done.

Two staging pairs per top are used in turn; events keep a pair from being rewritten
while a copy from it is still queued. Nothing here changes which batch is read or its
values: it is only the transport.
"""

import numpy as np

_SLOTS = 2


class _Slot:
    def __init__(self, shape, dtype):
        import cupy
        memory = cupy.cuda.alloc_pinned_memory(max(1, int(np.prod(shape)) * dtype.itemsize))
        self.pinned = np.frombuffer(memory, dtype, int(np.prod(shape))).reshape(shape)
        self.device = cupy.empty(shape, dtype)
        self.copied = None   # event on the side stream: pinned -> device done
        self.consumed = None  # event on the compute stream: device -> blob done


class DeviceFeeder:
    """Copies host batches into device arrays asynchronously (one feeder per data layer)."""

    def __init__(self):
        import cupy
        self._side = cupy.cuda.Stream(non_blocking=True)
        self._slots = {}  # (top index, shape, dtype) -> [slots], used in turn
        self._turn = {}

    def copy(self, key, host, out):
        """Queue ``out[...] = host`` (``out`` a C-contiguous cupy array) without waiting
        for the device; ``key`` tells the tops of one layer apart."""
        import cupy
        host = np.asarray(host)
        slot_key = (key, out.shape, out.dtype.str)
        slots = self._slots.get(slot_key)
        if slots is None:
            slots = self._slots[slot_key] = [_Slot(out.shape, out.dtype) for _ in range(_SLOTS)]
            self._turn[slot_key] = 0
        turn = self._turn[slot_key]
        self._turn[slot_key] = (turn + 1) % _SLOTS
        slot = slots[turn]
        if slot.copied is not None:
            slot.copied.synchronize()  # the pinned buffer's last copy has left it
        slot.pinned[...] = host.reshape(out.shape)
        compute = cupy.cuda.get_current_stream()
        if slot.consumed is not None:
            self._side.wait_event(slot.consumed)  # the device buffer's last reader is done
        slot.device.set(slot.pinned, stream=self._side)
        slot.copied = self._side.record()
        compute.wait_event(slot.copied)
        out[...] = slot.device
        slot.consumed = compute.record()
