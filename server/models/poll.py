"""`--model-control-mode poll`: follow the model repository as Triton's poll mode does.

Every `--repository-poll-secs` the poller scans the repository (`ModelManager.repository_models`) and compares
each model directory's fingerprint (every file's relative path, size and modification time) with the last
scan's: a new model directory is loaded, a changed one reloaded (its new versions are ready before the old
ones are retired, so no request is dropped), and one that disappeared unloaded (its queued requests still
complete). A failed load is logged and left as it is until its files change again; the server's readiness
says the rest (docs/server.md, "Readiness"). Models configured outside the repository ([models.NAME] with its
own path) are not polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Final

from resnet_serve.server.errors import ServeError
from resnet_serve.server.models.manager import ModelManager

log = logging.getLogger(__name__)

MAX_ENTRIES: Final = 10_000  # files looked at per model directory per scan (a bound on the scan's work)
Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """Every file under `model_dir` as (relative path, size, mtime in ns), sorted; at most MAX_ENTRIES."""
    found: list[tuple[str, int, int]] = []
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:  # removed while we looked: the next scan sees the result
                continue
            found.append((str(path.relative_to(model_dir)), stat.st_size, stat.st_mtime_ns))
            if len(found) >= MAX_ENTRIES:
                return tuple(found)
    return tuple(found)


class RepositoryPoller:
    """Scans the repository every `interval_s` seconds on the event loop (the scan itself in a thread)."""

    def __init__(self, manager: ModelManager, interval_s: float) -> None:
        self._manager = manager
        self._interval_s = interval_s
        self._seen: dict[str, Fingerprint] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Remember the repository as it is now (start-up has loaded it), then poll in the background."""
        self._seen = self._scan()
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("polling the model repository every %g s", self._interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _scan(self) -> dict[str, Fingerprint]:
        root = Path(self._manager.config.model_repository)
        return {name: fingerprint(root / name) for name in self._manager.repository_models()}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.poll_once()

    async def poll_once(self) -> None:
        """One scan: load new models, reload changed ones, unload removed ones."""
        now = await asyncio.to_thread(self._scan)
        previous, self._seen = self._seen, now
        for name in sorted(set(previous) - set(now)):
            log.info("model %s left the repository: unloading it", name)
            with contextlib.suppress(ServeError):  # not loaded (its load had failed): nothing to unload
                await self._manager.unload(name)
        for name in sorted(now):
            if name in previous and previous[name] == now[name]:
                continue
            what = "changed: reloading it" if name in previous else "appeared in the repository: loading it"
            log.info("model %s %s", name, what)
            try:
                await self._manager.load(name)
            except ServeError as exc:
                log.error("%s (poll: kept as it was until its files change again)", exc.message)
