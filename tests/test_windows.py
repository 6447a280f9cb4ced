"""The window plan covers every frame with bounded windows; the join crossfades overlaps with weights summing to 1."""

from __future__ import annotations

import numpy as np
import pytest

from engine.windows import Window, fade_in, join, join_weights, plan_windows


def _coverage(windows: list[Window], total: int) -> np.ndarray:
    covered = np.zeros(total, dtype=int)
    for w in windows:
        covered[w.start : w.end] += 1
    return covered


@pytest.mark.parametrize("total", [1, 7, 100, 101, 250, 499, 500, 501, 1234, 5000])
def test_plan_covers_every_frame_with_windows_no_longer_than_the_limit(total):
    windows = plan_windows(total, window=500, overlap=100)
    assert windows[0].start == 0 and windows[-1].end == total
    assert all(0 < w.length <= 500 for w in windows)
    assert _coverage(windows, total).min() >= 1


def test_consecutive_windows_share_exactly_the_overlap_and_it_is_their_prompt():
    windows = plan_windows(1234, window=500, overlap=100)
    assert windows[0].prompt == 0
    for prev, cur in zip(windows, windows[1:], strict=False):
        assert prev.end - cur.start == 100
        assert cur.prompt == 100
        assert cur.new > 0


def test_no_frame_is_covered_by_more_than_two_windows():
    windows = plan_windows(5000, window=50, overlap=24)
    assert _coverage(windows, 5000).max() <= 2


def test_input_shorter_than_a_window_is_one_window():
    assert plan_windows(300, window=500, overlap=100) == [Window(0, 300, 0)]


def test_empty_input_has_no_windows():
    assert plan_windows(0, window=500, overlap=100) == []


def test_last_window_ends_at_the_input_and_is_not_padded():
    windows = plan_windows(1000, window=500, overlap=100)
    assert [(w.start, w.end) for w in windows] == [(0, 500), (400, 900), (800, 1000)]


@pytest.mark.parametrize(("window", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_impossible_plans_are_rejected(window, overlap):
    with pytest.raises(ValueError):
        plan_windows(100, window=window, overlap=overlap)


@pytest.mark.parametrize("length", [1, 2, 7, 640, 64000])
def test_crossfade_ramps_sum_to_one_and_rise_monotonically(length):
    ramp = fade_in(length)
    np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-12)
    assert np.all(np.diff(ramp) > 0)
    assert 0 < ramp[0] <= ramp[-1] < 1


def test_join_weights_sum_to_one_everywhere_for_a_planned_layout():
    hop = 64
    windows = plan_windows(1234, window=500, overlap=100)
    starts = [w.start * hop for w in windows]
    lengths = [w.length * hop for w in windows]
    total = 1234 * hop
    acc = np.zeros(total)
    for start, weight in zip(starts, join_weights(starts, lengths, total), strict=True):
        acc[start : start + weight.size] += weight
    np.testing.assert_allclose(acc, 1.0, atol=1e-12)


def test_weights_are_one_outside_overlaps():
    weights = join_weights([0, 80], [100, 100], 180)
    np.testing.assert_array_equal(weights[0][:80], 1.0)
    np.testing.assert_array_equal(weights[1][20:], 1.0)
    assert np.all(weights[0][80:] < 1) and np.all(weights[1][:20] < 1)


def test_joining_windows_of_one_signal_gives_the_signal_back():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((2, 5000)).astype(np.float32)
    windows = plan_windows(50, window=20, overlap=6)
    hop = 100
    segments = [signal[:, w.start * hop : w.end * hop] for w in windows]
    out = join(segments, [w.start * hop for w in windows], 5000)
    assert out.shape == signal.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, signal, atol=1e-6)


def test_join_crossfades_between_different_segments_without_a_jump():
    a = np.zeros(100, dtype=np.float32)
    b = np.ones(100, dtype=np.float32)
    out = join([a, b], [0, 50], 150)
    assert out[0] == 0 and out[-1] == 1
    steps = np.abs(np.diff(out))
    assert steps.max() < 0.05  # a 50-sample fade, no click


def test_join_trims_a_last_segment_that_runs_past_the_end():
    out = join([np.ones(10), np.ones(10)], [0, 8], 15)
    assert out.shape == (15,)
    np.testing.assert_allclose(out, 1.0)


def test_join_rejects_gaps():
    with pytest.raises(ValueError, match="gap"):
        join_weights([0, 120], [100, 100], 220)


def test_join_rejects_three_way_overlaps():
    with pytest.raises(ValueError, match="overlaps segment 0"):
        join_weights([0, 10, 20], [100, 100, 100], 120)


def test_a_segment_inside_its_neighbour_is_refused():
    with pytest.raises(ValueError, match="past an end of its neighbour"):
        join_weights([0, 2, 5], [10, 3, 5], 10)
