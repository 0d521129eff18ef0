"""A pytest plugin (pytest.ini loads it): modules marked `heavy` run first, the heaviest first.

`make test` runs the suite in several processes (pytest-xdist, `--dist loadfile`: a module and its shared server
stay in one process), which take modules in collection order (the Makefile passes --no-loadscope-reorder:
xdist would otherwise order them by their number of tests). A heavy module that starts last runs alone
while the others idle, so each such module states its measured cost, `pytest.mark.heavy(seconds=N)`,
and starts before everything else. Without xdist the order changes nothing but the order.
"""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "heavy(seconds): a module that takes about `seconds` alone; run it first")


def weight(item: pytest.Item) -> float:
    marker = item.get_closest_marker("heavy")
    return marker.kwargs.get("seconds", 60) if marker else 0.0


def pytest_collection_modifyitems(items) -> None:
    # stable: the tests of a module keep their order, and unmarked modules their collection order
    items.sort(key=lambda item: -weight(item))
