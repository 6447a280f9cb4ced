"""A fixed evaluation list written as files, in the official test-data layout, to listen to or to evaluate.

    OUT/{op}/input/{n}.wav  OUT/{op}/ground_truth/{n}.wav  OUT/{op}/instruction/{n}.txt  OUT/clips.json

`instruction/{n}.txt` holds "Instruction: <text>" and "Stems: <input classes>", as the official evaluation data
(src/data/slakh_datamodule.py, get_test_files); clips.json records song, offset and classes of every clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.errors import DataError
from engine.files import user_path, write_audio_atomic, write_json_atomic
from engine.train.data.datasets import StemDataset


def export_clips(data: StemDataset | Sequence[StemDataset], out_dir: str | Path, progress: bool = True) -> int:
    """Write every clip of `data` (one data set, or several drawn alike: `imusic data export` gives one per task, the
    clips `imusic eval` scores); returns how many. `out_dir` must be new or empty."""
    from tqdm import tqdm

    sets = [data] if isinstance(data, StemDataset) else list(data)
    if not sets:
        raise DataError("no clips to export")
    data = sets[0]  # what the sets share: their source, split, seed and clip settings
    out = user_path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty: choose a new folder for the clips")
    counters: dict[str, int] = {}
    records = []
    every = [(one, index) for one in sets for index in range(len(one))]
    for one, index in tqdm(every, desc="export", unit="clip", disable=not progress):
        clip = one[index]
        number = counters.get(clip.op, 0)
        counters[clip.op] = number + 1
        folder = out / clip.op
        for sub in ("input", "ground_truth", "instruction"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # the folder was empty when the export began: no killed writer's leftovers to sweep before each clip
        write_audio_atomic(folder / "input" / f"{number}.wav", clip.input, clip.sample_rate, sweep=False)
        write_audio_atomic(folder / "ground_truth" / f"{number}.wav", clip.target, clip.sample_rate, sweep=False)
        (folder / "instruction" / f"{number}.txt").write_text(
            f"Instruction: {clip.instruction}\nStems: {', '.join(clip.input_classes)}\n", encoding="utf-8"
        )
        records.append(
            {
                "op": clip.op,
                "index": number,
                "stem": clip.stem_name,
                "instruction": clip.instruction,
                "song_id": clip.song_id,
                "offset": clip.offset,
                "input_classes": list(clip.input_classes),
                "target_classes": list(clip.target_classes),
                "quiet": clip.quiet,
            }
        )
    meta = {
        "source": str(data.catalog.root),
        "layout": data.catalog.layout,
        "split": data.split,
        "seed": data.seed,
        "sample_rate": data.config.sample_rate,
        "seconds": data.config.seconds,
        "classes": data.config.classes if isinstance(data.config.classes, str) else list(data.config.classes),
        "skipped_songs": sorted({tuple(item) for one in sets for item in one.skipped}),
        "clips": records,
    }
    write_json_atomic(out / "clips.json", meta, sort_keys=False)
    return len(records)
