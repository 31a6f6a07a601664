"""Who may reach what on the server: TLS/mTLS (tls.py), protocol groups behind a header (restrict.py), bearer
tokens for the image API (tokens.py), Triton's model control mode (model_control.py), transport limits
(transport.py), all enforced by one gRPC interceptor (interceptor.py) that `policy.py` builds from the config
and reloads on SIGHUP. The contracts (groups, header names, token checks, TLS material) are plain functions
and objects, so an HTTP front end can enforce the same rules. docs/security.md is the operator's guide.
"""
