"""The engine process of `serve --workers N`: the model manager, the batchers and the runtimes of the whole
server, answering the worker processes' requests (host.py)."""
