"""Reading a Prometheus text exposition the way a scraper stores it."""

from __future__ import annotations

import re

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposed_samples(text: str) -> Samples:
    """Every sample of a text exposition by the name it is exposed under (prometheus_client's parser would
    add `_total` to the samples of a counter family, hiding the name a scraper stores)."""
    found: Samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is not None:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match[2] or "")))
            found[match[1], labels] = float(match[3])
    return found
