"""map_ahead: order kept, at most `depth` results waiting, errors raised at their item."""

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.ahead import map_ahead


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=8))
def test_results_come_in_order(items, depth):
    assert list(map_ahead(lambda x: x * 3, items, depth=depth)) == [x * 3 for x in items]


def test_runs_ahead_but_never_more_than_depth_items():
    started: list[int] = []

    def fn(x):
        started.append(x)
        return x

    results = map_ahead(fn, range(100), depth=4)
    first = next(results)
    assert first == 0
    # the consumer has read one result: at most 1 + depth calls were submitted
    assert len(started) <= 5
    rest = list(results)
    assert rest == list(range(1, 100))
    assert started == list(range(100))


def test_calls_run_in_another_thread():
    threads = set(map_ahead(lambda _: threading.current_thread().name, range(3), depth=2))
    assert threads and all(name.startswith("ingest-ahead") for name in threads)


def test_an_error_is_raised_at_its_item_after_the_items_before_it():
    def fn(x):
        if x == 3:
            raise ValueError("bad document 3")
        return x

    got = []
    with pytest.raises(ValueError, match="bad document 3"):
        for value in map_ahead(fn, range(10), depth=2):
            got.append(value)
    assert got == [0, 1, 2]


def test_closing_early_cancels_the_calls_not_started():
    started: list[int] = []
    release = threading.Event()

    def fn(x):
        started.append(x)
        if x > 0:
            release.wait(5)  # item 1 runs until released; items 2-4 wait in the queue
        return x

    results = map_ahead(fn, range(50), depth=4)
    assert next(results) == 0
    threading.Timer(0.2, release.set).start()
    results.close()  # cancels 2-4, then waits for item 1
    assert started in ([0], [0, 1])  # 1 may have started before the close; 2-4 never did


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be at least 1"):
        list(map_ahead(str, [1], depth=0))
