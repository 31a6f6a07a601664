"""The messages between a worker and the engine: each a tuple whose first item is one of these names.

worker → engine
    INFER rid name version tensors out timeout_s slot
                                                  one request (tensors: [(name, dtype, shape, data)]: data
                                                  is bytes or an array inline, or an int offset in the arena;
                                                  out: (offset, capacity) in the arena for the outputs; slot:
                                                  the version's row of queue places, server/ipc/places.py)
    CANCEL rid                                    the client went away; the engine answers rid all the same
    EXPIRE rid                                    its deadline passed: withdrawn if still queued and answered
                                                  with the expiry error (a batch that took it completes)
    CALL rid op args                              model control, shared-memory registry, statistics
    READY grpc_port http_port                     the worker listens (once)
    METRICS rid state                             the answer to PULL_METRICS: its ServerMetrics' export
engine → worker
    RESULT rid outputs queue_s compute_s batch    outputs as tensors above (an int: an offset in `out`)
    ERROR rid code message outcome                the request failed: a ServeError's status, message, outcome
    REPLY rid value / FAIL rid code message outcome   a CALL's answer
    CATALOG catalog                               the models (server/models/catalog.py), after every change
    REGIONS op args                               the shared-memory registry changed (mirror it)
    PULL_METRICS rid                              send your metrics (for the server's totals)
"""

from __future__ import annotations

from typing import Final

INFER: Final = "infer"
CANCEL: Final = "cancel"
EXPIRE: Final = "expire"
CALL: Final = "call"
READY: Final = "ready"
METRICS: Final = "metrics"
RESULT: Final = "result"
ERROR: Final = "error"
REPLY: Final = "reply"
FAIL: Final = "fail"
CATALOG: Final = "catalog"
REGIONS: Final = "regions"
PULL_METRICS: Final = "pull-metrics"

# CALL ops
LOAD: Final = "load"
UNLOAD: Final = "unload"
REGISTER: Final = "register"
UNREGISTER: Final = "unregister"
REGISTER_CUDA: Final = "register-cuda"
UNREGISTER_CUDA: Final = "unregister-cuda"
STATISTICS: Final = "statistics"

# Tensors smaller than this cross inline in the message: for a few hundred bytes the arena's bookkeeping
# costs more than the copy through the socket.
INLINE_MAX: Final = 16 * 1024
