"""What crosses between the server's processes (`serve --workers N`): the framed messages on each worker's
socket to the engine (channel.py), and the shared memory that tensors cross in (arena.py)."""
