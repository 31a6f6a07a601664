"""The private descriptor pool that holds our `inference` package (grpc_service.proto, model_config.proto).

tritonclient registers Triton's own copies of these files, with the same `inference.*` symbols, in protobuf's
default pool; two definitions of one symbol in one pool fail at import. Keeping ours in a pool of their own
lets the server and tritonclient share a process (in-process benchmarks, tests). The wire format does not
depend on the pool. protos/generate.sh points the generated modules here.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
