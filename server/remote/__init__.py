"""A worker process's view of the engine (`serve --workers N`): the link that carries its requests to the
engine's batchers (link.py) and the model manager that mirrors the engine's models (manager.py), so that the
services run unchanged in a worker."""
