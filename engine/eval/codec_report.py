"""What a codec can carry, measured before any language model is trained on it.

`python -m engine.eval.codec_report CODEC_DIR --data DIR [--split validation]` prints two checks:
- pitch: pure tones through the codec, the strongest output frequency and the share of output power within 3 % of
  the tone. A codec whose decoder only learnt the spectral envelope gives back a buzz at its frame rate (every tone
  comes out as harmonics of 50 Hz): no model on top of it can return a melody.
- ceiling: the codec round trip of the edit targets against the identity row (the input unchanged), per task, with
  the evaluation's own clips and metrics (log-mel distance, mel SSIM). A task whose codec ceiling does not beat
  identity cannot be won by any model that outputs this codec's codes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ImusicError, report_error
from engine.files import write_json_atomic
from engine.train.data import CLIP_SECONDS, FOUR_STEMS, HELD_OUT

TONES_HZ = (110.0, 220.0, 440.0, 880.0)
PITCH_TOLERANCE = 0.03  # a tone counts as returned when the output's strongest frequency lies within 3 %


def tone_pitch(
    roundtrip: Callable[[np.ndarray], np.ndarray], rate: int, freqs: Sequence[float] = TONES_HZ, seconds: float = 2.0
) -> list[dict[str, float]]:
    """Each tone's strongest output frequency and the share of output power near the tone (middle half, Hann)."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    rows = []
    for freq in freqs:
        tone = (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        out = np.asarray(roundtrip(tone), dtype=np.float64)[:n]
        middle = slice(n // 4, 3 * n // 4)  # away from the edges' padding
        segment = out[middle] * np.hanning(n // 2)
        power = np.abs(np.fft.rfft(segment)) ** 2
        bins = np.fft.rfftfreq(n // 2, 1.0 / rate)
        near = np.abs(bins - freq) <= PITCH_TOLERANCE * freq
        total = float(power.sum())
        rows.append(
            {
                "tone_hz": float(freq),
                "strongest_hz": float(bins[int(np.argmax(power))]),
                "power_near_tone": float(power[near].sum() / total) if total > 0 else 0.0,
                "returned": bool(abs(bins[int(np.argmax(power))] - freq) <= PITCH_TOLERANCE * freq),
            }
        )
    return rows


# What the report scores when not told: the tasks whose ceiling the codec caps, validation clips (never the test songs).
TASKS, SPLIT, LIMIT = ("extract", "remove"), "validation", 20


def ceiling(
    roundtrip: Callable[[np.ndarray], np.ndarray],
    data: str | Path,
    rate: int,
    tasks: Sequence[str] = TASKS,
    split: str = SPLIT,
    clips_per_song: int = 2,
    limit: int = LIMIT,
    seed: int = 0,
    seconds: float = CLIP_SECONDS,
) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {row: {log_mel_distance, mel_ssim, n}}} for the identity and codec rows on `limit` of `split`'s clips,
    spread over its songs."""
    from engine.eval.clips import check_tasks, held_out_clips, spread_indices
    from engine.eval.metrics import log_mel_distance, mel_ssim

    out: dict[str, dict[str, dict[str, float]]] = {}
    for task in check_tasks(tasks):
        clips = held_out_clips(data, task, rate, seconds, FOUR_STEMS, seed, clips_per_song, split)
        scores: dict[str, list[tuple[float, float]]] = {"identity": [], "codec": []}
        for index in spread_indices(len(clips), limit):
            clip = clips[index]
            for row, audio in (("identity", clip.input), ("codec", roundtrip(clip.target))):
                scores[row].append((log_mel_distance(audio, clip.target, rate), mel_ssim(audio, clip.target, rate)))
        out[task] = {
            row: {
                "log_mel_distance": float(np.mean([s[0] for s in values])),
                "mel_ssim": float(np.mean([s[1] for s in values])),
                "n": len(values),
            }
            for row, values in scores.items()
        }
    return out


def codec_roundtrip_fn(codec_dir: str | Path) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """A bare codec directory (what `imusic train --stage codec` exports) -> (audio [N] -> audio [N], rate)."""
    from engine.eval.evaluate import codec_roundtrip
    from engine.model.codec import Codec
    from engine.weights.transformers_layout import load_codec_dir

    codec = Codec(load_codec_dir(codec_dir))
    return (lambda audio: codec_roundtrip(codec, audio)), codec.sample_rate


def markdown(pitch: list[dict[str, float]], table: dict[str, Any]) -> str:
    lines = ["| tone (Hz) | strongest output (Hz) | output power near the tone |", "|---|---|---|"]
    lines += [f"| {r['tone_hz']:.0f} | {r['strongest_hz']:.0f} | {r['power_near_tone']:.3f} |" for r in pitch]
    lines += ["", "| task | row | log-mel distance (dB, lower better) | mel SSIM (higher better) | clips |"]
    lines += ["|---|---|---|---|---|"]
    for task, rows in table.items():
        for row, s in rows.items():
            lines.append(f"| {task} | {row} | {s['log_mel_distance']:.2f} | {s['mel_ssim']:.3f} | {s['n']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.eval.codec_report", description=__doc__.splitlines()[0])
    parser.add_argument("codec", help="codec directory (config.json + model.safetensors)")
    parser.add_argument("--data", help="stem data set for the ceiling rows (left out: pitch check only)")
    parser.add_argument("--split", default=SPLIT, choices=HELD_OUT)
    parser.add_argument("--task", action="append", dest="tasks", help=f"task (repeatable; default {', '.join(TASKS)})")
    parser.add_argument(
        "--limit", type=int, default=LIMIT, help=f"clips per task, spread over the split's songs (default {LIMIT})"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    try:
        roundtrip, rate = codec_roundtrip_fn(args.codec)
        pitch = tone_pitch(roundtrip, rate)
        tasks = args.tasks or TASKS
        table = ceiling(roundtrip, args.data, rate, tasks, args.split, limit=args.limit) if args.data else {}
    except ImusicError as exc:
        return report_error(exc, "python -m engine.eval.codec_report")
    print(markdown(pitch, table), end="")
    if args.json:
        write_json_atomic(args.json, {"pitch": pitch, "ceiling": table, "split": args.split}, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
