"""`serve --workers N`: the engine process (supervisor.py: the models, the batchers and the worker processes'
supervision) and the worker processes (worker.py: the front ends, sharing the ports)."""
