"""engine.eval.clips.spread_indices: the one way a few items are picked from a split grouped by song (validation
clips, level clips, a limited evaluation, mask tuning, the codec report)."""

from __future__ import annotations

import pytest

from engine.eval.clips import held_out_clips, spread_indices

RATE = 16000


def test_picks_run_from_the_first_to_the_last_rounded_to_the_nearest():
    assert spread_indices(6, 4) == [0, 2, 3, 5]  # 0, 1.67, 3.33, 5
    assert spread_indices(10, 2) == [0, 9]


def test_as_many_picks_as_items_or_more_take_them_all():
    assert spread_indices(3, 3) == spread_indices(3, 8) == [0, 1, 2]
    assert spread_indices(0, 4) == []


def test_one_pick_is_the_first_and_none_is_none():
    assert spread_indices(5, 1) == [0]
    assert spread_indices(5, 0) == []


@pytest.mark.parametrize("count", range(1, 40))
def test_every_pick_is_a_different_item_in_order(count):
    for picks in range(1, count + 1):
        chosen = spread_indices(count, picks)
        assert len(chosen) == picks and chosen == sorted(set(chosen)) and chosen[0] == 0
        assert picks == 1 or chosen[-1] == count - 1


def test_the_codec_report_scores_a_limit_of_clips_spread_over_the_split(synth_data):
    from engine.eval.codec_report import ceiling

    seen = []

    def roundtrip(audio):
        seen.append(audio)
        return audio

    clips = held_out_clips(synth_data, "remove", RATE, 1.0, "4stems", 0, 3, "test")
    assert len(clips) == 3
    ceiling(roundtrip, synth_data, RATE, ("remove",), "test", clips_per_song=3, limit=2, seconds=1.0)
    assert [target.tolist() for target in seen] == [clips[0].target.tolist(), clips[2].target.tolist()]
