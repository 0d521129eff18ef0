"""The overload checks of test_overload.py (tests/overload_checks.py) on the KServe engine, on the same archives:
4x the tuned concurrency answered 200 and right with the same engine process, and a flood of maximum-size bodies
leaving small good requests answered and the engine alive. Apart from test_overload.py, which is a heavy module
and starts with the suite, so that this engine's ~1.4 GB is not added to the suite's busiest minutes."""

import pytest

import overload_checks
from overload_checks import check_4x_answered, check_flood, is_cat
from support import encode, photo
from tskit.declaration import served


@pytest.fixture(scope="module")
def target(kserve_engine):
    return overload_checks.kserve_engine(kserve_engine)


def test_4x_the_tuned_concurrency_is_all_answered_right_on_the_engine(target):
    check_4x_answered(target, "mobilenet_v2", encode(photo("chelsea")), "image/jpeg", is_cat)


def test_a_flood_of_maximum_size_bodies_leaves_the_engine_answering(target):
    model = [d.name for d in served() if d.kind == "image-classifier"][0]
    print(check_flood(target, model))
