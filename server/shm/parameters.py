"""The tensor parameters of KServe's shared-memory extension (Triton's names): a tensor whose parameters name
a registered region is read from it (an input) or written to it (an output) instead of travelling in the
message or the HTTP body. Read by server/kserve/codec.py (gRPC and HTTP alike) and server/http/binary.py."""

from __future__ import annotations

from typing import Final

SHARED_MEMORY_REGION: Final = "shared_memory_region"
SHARED_MEMORY_BYTE_SIZE: Final = "shared_memory_byte_size"
SHARED_MEMORY_OFFSET: Final = "shared_memory_offset"
