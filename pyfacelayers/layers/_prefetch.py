"""Prefetching for the data layers that read files (ImageData, Data, HDF5Data), as
Caffe's prefetch thread: WHAT the next batches are is decided on the main thread, HOW
they are made (decode, transform, stack) runs in a bounded pool of worker threads.

A layer supplies:
  - ``_plan_batch()``: runs on the main thread; advances the layer's position (list line,
    LMDB cursor, HDF5 row) and makes every random draw (shuffles, mirror, crop) from
    :attr:`draw_rng`, in today's order; returns a callable that makes the batch: a list
    of host arrays, one per top (pure work: no draws, no shared state);
  - ``_position()`` / ``_set_position(state)``: its position as a dict (what a snapshot
    saves) and back.

Planning runs ahead of the net by up to ``depth`` batches, so the position and the
generator the planner uses are ahead too. What the rest of the code sees stays at the
batch the net will read next: ``get_state()`` returns the position saved before that
batch was planned, and the layer's own ``rng`` (which solver snapshots save) is set to
the generator state saved with it. A restore (``set_state`` or a new ``rng`` state) drops
the planned batches and plans again from there. So order, draws, snapshots and resumes
are the same with any number of workers, including 0 (everything inline, no thread).

``PYFACELAYERS_DATA_WORKERS`` (default 1, Caffe's one prefetch thread; 0 = inline) sets
the pool size, per layer. The seam for a device copy: ``_take_batch`` hands ready host
arrays to ``_set_tops``; a GPU path can copy them (pinned, asynchronously) there.
"""

import collections
import concurrent.futures
import os

import numpy as np

from .. import limits

DEFAULT_WORKERS = 1


def worker_count():
    return limits.parse_count(os.environ.get("PYFACELAYERS_DATA_WORKERS", DEFAULT_WORKERS),
                              "PYFACELAYERS_DATA_WORKERS", "decode on the net's thread")


_Planned = collections.namedtuple("_Planned", "position rng_state result")


class PrefetchMixin:
    """The prefetch queue of a data layer (see the module's docstring)."""

    _pool = None
    _queue = None
    _draw = None  # the planner's generator (a copy of ``rng`` once planning starts)
    _official_rng = None  # the rng state last given to ``rng`` by this mixin

    # -- what the layer and the transformer draw from --------------------------------
    @property
    def draw_rng(self):
        return self._draw if self._draw is not None else self.rng

    def _start_planner(self):
        if self._draw is None:
            state = self.rng.bit_generator.state
            self._draw = np.random.Generator(type(self.rng.bit_generator)())
            self._draw.bit_generator.state = state
            self._official_rng = state

    # -- state seen from outside ------------------------------------------------------
    def get_state(self):
        if self._queue:
            return self._queue[0].position
        return self._position()

    def set_state(self, state):
        self._drop_planned()
        self._set_position(state)

    def _drop_planned(self):
        """Forget the batches planned ahead: back to the position and generator state of
        the first of them (what get_state and rng show)."""
        if not self._queue:
            return
        first = self._queue[0]
        for planned in self._queue:
            if isinstance(planned.result, concurrent.futures.Future):
                planned.result.cancel()
        for planned in self._queue:  # let running work finish before state moves
            if isinstance(planned.result, concurrent.futures.Future) and \
                    not planned.result.cancelled():
                concurrent.futures.wait([planned.result])
        self._queue.clear()
        self._set_position(first.position)
        self._draw.bit_generator.state = first.rng_state

    # -- the queue ----------------------------------------------------------------------
    def _take_batch(self):
        """The next batch as host arrays (one per top), planned and made as above."""
        self._start_planner()
        if self._queue is None:
            self._queue = collections.deque()
        if self.rng.bit_generator.state != self._official_rng:
            # the rng was restored (solver snapshot): plan again from there
            self._drop_planned()
            self._draw.bit_generator.state = self.rng.bit_generator.state
        workers = worker_count()
        depth = 1 if workers == 0 else 2 * workers
        if workers and (self._pool is None or self._pool._max_workers != workers):
            self._shutdown_pool()
            self._pool = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="pyfacelayers-data-%s" % self.name)
        while len(self._queue) < depth:
            position, rng_state = self._position(), self._draw.bit_generator.state
            make = self._plan_batch()
            result = self._pool.submit(make) if workers else make
            self._queue.append(_Planned(position, rng_state, result))
        planned = self._queue.popleft()
        try:
            arrays = planned.result.result() if workers else planned.result()
        except BaseException:
            # the batch failed (a bad image): the layer stays before it, as without
            # prefetching
            self._queue.appendleft(planned)
            self._drop_planned()
            raise
        # what the next Forward will read: the next planned batch, or the planner's
        # position when nothing is planned
        following = self._queue[0].rng_state if self._queue else self._draw.bit_generator.state
        self.rng.bit_generator.state = following
        self._official_rng = following
        return arrays

    def _shutdown_pool(self):
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close_prefetch(self):
        """Stop the worker threads (they also stop when the layer is collected)."""
        if self._queue:
            self._drop_planned()
        self._shutdown_pool()

    def __del__(self):
        pool = self._pool
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
