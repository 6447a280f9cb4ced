"""engine.train.feeding: clips read ahead by loader workers, or here when the workers are stuck."""

from __future__ import annotations

import time

import pytest
import torch

from engine.train import feeding
from engine.train.feeding import BatchSampler, ClipFeeder


class StuckInWorkers:
    """Items are their index; in a loader worker (forked from a process holding CUDA state, say) it never returns."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        if torch.utils.data.get_worker_info() is not None:
            time.sleep(3600)
        return index


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no noise from the killed workers
def test_a_stuck_reading_process_costs_the_timeout_once_then_clips_are_read_here(monkeypatch, capsys):
    monkeypatch.setattr(feeding, "LOADER_TIMEOUT_S", 1.0)
    alone = ClipFeeder(StuckInWorkers(), BatchSampler(10, seed=3), batch=4)
    expected = [alone.next() for _ in range(5)]
    feeder = ClipFeeder(StuckInWorkers(), BatchSampler(10, seed=3), batch=4, workers=2)
    started = time.monotonic()
    assert [feeder.next() for _ in range(5)] == expected  # the same clips, in the sampler's order
    assert time.monotonic() - started < 8  # the timeout, not a polite shutdown's 5 s a stuck worker
    said = capsys.readouterr().err
    assert said.count("no batch from the reading processes in 1 s (stuck); reading in this process") == 1


def test_a_loader_error_that_is_not_a_timeout_is_raised():
    class Broken(StuckInWorkers):
        def __getitem__(self, index: int) -> int:
            raise ValueError("a damaged clip")

    feeder = ClipFeeder(Broken(), BatchSampler(10, seed=3), batch=4, workers=1)
    with pytest.raises(ValueError, match="a damaged clip"):
        feeder.next()
