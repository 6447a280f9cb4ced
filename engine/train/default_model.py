"""Assemble the embedded default model (engine/assets/default/) from the three training runs, with its model card.

`python -m engine.train.default_model --work .cache/default-model -o engine/assets/default` (what `make default-model`
runs) copies the adapter run's model directory (base in transformers layout + our adapter), and writes
model_card.json: sizes, data, every stage's settings, steps, wall time and final losses, and the evaluation summary.
The evaluation report itself (Markdown, JSON, spectrogram PNGs) is copied to docs/embedded_model/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from safetensors import safe_open

from engine.errors import CheckpointError, ImusicError, report_error
from engine.eval.report import REPORT_JSON, REPORT_MD, publish_report, report_summary
from engine.eval.verdict import beats_unchanged
from engine.files import read_json_object, staged_dir
from engine.model.config import is_adapter_name
from engine.modes import DEFAULT_MODE, RESYNTH
from engine.train.codec_train import codec_run_of, final_losses, read_log
from engine.train.config import (
    CODEC_RENAMED,
    CODEC_SETTINGS,
    EMBEDDED_DOCS,
    RUN_MODEL,
    history_losses,
    read_history,
    shipped_targets,
)
from engine.train.data import DATASET_JSON
from engine.weights.loader import (
    MASK_DEPTH,
    model_parts,
    new_model_card,
    peek_card,
    read_model_card,
    write_model_card,
)
from engine.weights.names import ADAPTER_DIR, ADAPTER_JSON, ADAPTER_WEIGHTS, BASE_DIR, CONFIG, WEIGHTS
from engine.weights.transformers_layout import safetensors_files

EMBEDDED_NAME = "imusic-embedded-small"
# The embedded model's report as its card links it: EMBEDDED_DOCS, relative to the repository.
REPORT_LINK = f"{EMBEDDED_DOCS.relative_to(EMBEDDED_DOCS.parents[1]).as_posix()}/{REPORT_MD}"


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, f"{path} is missing", CheckpointError)


def codec_summary(run: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Settings, steps, wall time and final losses of the codec stage (engine.train.codec_train's run folder).

    A run started from another codec (`--init-codec`, recorded as extra.init_from) lists that run under
    "continues", recursively, and its steps and wall time count in the totals.
    """
    cfg = _read_json(run / CODEC_SETTINGS)
    rows = read_log(run)
    if not rows:
        raise CheckpointError(f"{run} holds no codec training log")
    final = final_losses(rows)
    summary = {
        "command": "make model-codec",
        # as saved, under today's names (runs saved before the renames, e.g. batch_size, say batch here)
        "settings": {CODEC_RENAMED.get(k, k): v for k, v in cfg.items() if k != "extra"},
        "steps": rows[-1]["step"],
        "wall_seconds": rows[-1]["seconds"],
        "final_losses": final,
    }
    parent = (cfg.get("extra") or {}).get("init_from")
    if parent:
        parent_run = codec_run_of(Path(parent))  # the run folder holding the exported codec directory
        if parent_run is None:
            raise CheckpointError(f"{run} started from {parent}, whose run folder is missing")
        if parent_run.resolve() in _seen or run.resolve() == parent_run.resolve():
            raise CheckpointError(f"the codec runs' init_from records form a loop at {parent_run}")
        earlier = codec_summary(parent_run, (*_seen, run.resolve()))
        summary["continues"] = earlier
        summary["total_steps"] = earlier.get("total_steps", earlier["steps"]) + summary["steps"]
        summary["stage_wall_seconds"] = summary["wall_seconds"]
        summary["wall_seconds"] = round(earlier["wall_seconds"] + summary["wall_seconds"], 1)
    return summary


def train_summary(run: Path, target: str) -> dict[str, Any]:
    """Settings, steps, wall time and final losses of an `imusic train` run (history.json)."""
    history = read_history(run)
    cfg = dict(history.get("config") or {})
    cfg.pop("extra", None)
    return {
        "command": f"make {target}",
        "settings": cfg,
        "steps": history["train"][-1][0] if history.get("train") else 0,
        "wall_seconds": round(float(history.get("wall_seconds", 0.0)), 1),
        **history_losses(history),
    }


def _tensor_sizes(file: Path) -> dict[str, int]:
    """name -> element count of every tensor in a safetensors file, from its header (no tensor is read)."""
    with safe_open(str(file), "pt") as handle:
        return {name: math.prod(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118


def parameter_counts(model_dir: Path) -> dict[str, int]:
    """Parameters of each part of our model directory (decoder, text encoder, codec, adapter)."""
    counts = {"decoder": 0, "text_encoder": 0, "codec": 0, "adapter": 0}
    for file in safetensors_files(model_dir / BASE_DIR):
        for name, numel in _tensor_sizes(file).items():
            part = {"text_encoder": "text_encoder", "audio_encoder": "codec"}.get(name.split(".", 1)[0], "decoder")
            counts[part] += numel
    adapter = _tensor_sizes(model_dir / ADAPTER_DIR / ADAPTER_WEIGHTS)
    # a converted official adapter file also carries base weights it was saved with: only adapter tensors count
    counts["adapter"] = sum(numel for name, numel in adapter.items() if is_adapter_name(name))
    return counts


def model_sizes(model_dir: Path) -> dict[str, Any]:
    """The card's `sizes` of a model folder (base/ in transformers layout + adapter/): parameters per part, and the
    codec's, decoder's, text encoder's and adapter's shapes as their configs give them."""
    base_cfg = _read_json(model_dir / BASE_DIR / CONFIG)
    codec_cfg, decoder_cfg = base_cfg["audio_encoder"], base_cfg["decoder"]
    return {
        "parameters": parameter_counts(model_dir),
        "codec": {
            "sample_rate": codec_cfg["sampling_rate"],
            "hop": math.prod(codec_cfg["upsampling_ratios"]),
            "codebooks": decoder_cfg.get("num_codebooks"),
            "codebook_size": codec_cfg["codebook_size"],
        },
        "decoder": {
            "layers": decoder_cfg["num_hidden_layers"],
            "dim": decoder_cfg["hidden_size"],
            "heads": decoder_cfg["num_attention_heads"],
            "ffn_dim": decoder_cfg["ffn_dim"],
        },
        "text_encoder": {k: base_cfg["text_encoder"][k] for k in ("d_model", "num_layers", "vocab_size")},
        "adapter": _read_json(model_dir / ADAPTER_DIR / ADAPTER_JSON).get("fusion"),
    }


def model_stems(model_dir: Path) -> list[str] | None:
    """The stems a model folder edits, by loading's rule (engine.weights.peek_card: its adapter's, else its card's),
    also while the folder is being assembled and has no card yet."""
    return (peek_card(model_dir, model_parts(model_dir)[1]) or {}).get("stems")


def assemble(work: Path, out: Path, docs: Path | None = None) -> dict[str, Any]:
    """Copy the finished model into `out` and write its model card; returns the card."""
    work = Path(work)
    model = work / "adapters" / RUN_MODEL
    for needed in (model / BASE_DIR / WEIGHTS, model / ADAPTER_DIR / ADAPTER_WEIGHTS):
        if not needed.is_file():
            raise CheckpointError(f"the adapter stage has not finished: {needed} is missing (run make model-adapters)")
    data = _read_json(work / "synth16k" / DATASET_JSON)
    eval_dir = work / "eval"
    report = _read_json(eval_dir / REPORT_JSON) if (eval_dir / REPORT_JSON).is_file() else None

    with staged_dir(out) as tmp:
        shutil.copytree(model, tmp, copy_function=shutil.copy2, dirs_exist_ok=True)  # the run holds hard links
        own_card = read_model_card(tmp)  # checked as loading checks it: its mask_depth goes on unread
        card: dict[str, Any] = new_model_card(
            EMBEDDED_NAME,
            description=(
                "The project's own small Instruct-MusicGen, trained on 2 CPU cores on synthetic General MIDI stems: "
                "a codec, a text-to-music base model and the Instruct adapters (audio fusion + text LoRA). It runs the "
                "whole method end to end; whether its edits beat leaving the audio unchanged is measured in "
                "`evaluation.beats_identity`. It is not a substitute for MusicGen weights."
            ),
            stems=model_stems(tmp),
            sizes=model_sizes(tmp),
            data={
                "command": "make model-data",
                "generator": "imusic data synth",
                "settings": _portable(
                    {k: data[k] for k in ("tracks", "seconds", "sample_rate", "seed", "soundfonts") if k in data}
                ),
                "split": "by song, deterministic (engine.train.data.datasets.split_songs); validation and test songs "
                "are held out of every stage (codec included)",
            },
            stages={
                "codec": codec_summary(work / "codec"),
                "base": train_summary(work / "base", "model-base"),
                "adapters": train_summary(work / "adapters", "model-adapters"),
            },
            provenance=own_card.get("provenance", {}),
        )
        if own_card.get(MASK_DEPTH):  # chosen on validation songs for this adapter (make model-mask-depth)
            card[MASK_DEPTH] = own_card[MASK_DEPTH]
        card["wall_seconds_total"] = round(sum(stage["wall_seconds"] for stage in card["stages"].values()), 1)
        # How far the audio-fusion gates opened (zero at init): near zero means the edits barely use the input audio.
        card["stages"]["adapters"]["fusion_gates"] = [
            round(g, 5) for g in fusion_gates(tmp / ADAPTER_DIR / ADAPTER_WEIGHTS)
        ]
        if report is not None:
            card["evaluation"] = evaluation(report, "make model-eval")
        write_model_card(tmp, card)
    if docs is not None and report is not None:
        publish_report(eval_dir, docs)
    return card


def evaluation(report: dict, command: str) -> dict:
    """The card's `evaluation` from an `imusic eval` report (what `command` made): its summary per task and, per task
    and metric, whether the model beats leaving the audio unchanged (what every front end's note is made from). The
    CPU build, a refreshed evaluation and the accelerator recipe's install all write it so."""
    summary = report_summary(report)
    return {
        "command": command,
        "report": REPORT_LINK,
        "mode": f"{DEFAULT_MODE} (the default); the {RESYNTH} row is the paper's re-synthesis",
        "summary": summary,
        "beats_identity": beats_unchanged(summary),
    }


def refresh_evaluation(model_dir: Path, eval_dir: Path, docs: Path | None, command: str) -> dict:
    """Put a new evaluation of a shipped model (an `imusic eval` folder) into its card and its report into `docs`;
    nothing else of the model changes."""
    card = read_model_card(model_dir)
    report = read_json_object(eval_dir / REPORT_JSON, f"{eval_dir} holds no {REPORT_JSON}", CheckpointError)
    if report.get("model", {}).get("model") != card.get("name"):
        raise CheckpointError(
            f"{eval_dir} evaluated {report.get('model', {}).get('model')!r}, not {card.get('name')!r}"
        )
    card["evaluation"] = evaluation(report, command)
    write_model_card(model_dir, card)
    if docs is not None:
        publish_report(eval_dir, docs)
    return card


def fusion_gates(file: Path) -> list[float]:
    """The audio-fusion gates of an adapter file (zero at init; near zero means the edits barely use the audio)."""
    with safe_open(str(file), "pt") as handle:
        return [float(g) for g in handle.get_tensor("fusion.gates")] if "fusion.gates" in handle.keys() else []  # noqa: SIM118


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train.default_model", description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=".cache/default-model", help="folder of the training runs")
    parser.add_argument("-o", "--output", help="where the model goes (default: the checkout's shipped model)")
    parser.add_argument("--docs", help="where the evaluation report is copied (default: the checkout's docs)")
    parser.add_argument(
        "--evaluation",
        metavar="EVAL_DIR",
        help="only put this `imusic eval` folder of the model at -o into its card and docs (a re-measurement)",
    )
    parser.add_argument("--command", default="make model-eval", help="with --evaluation: the command it came from")
    args = parser.parse_args(argv)
    tool = "python -m engine.train.default_model"
    try:
        output, docs = shipped_targets(args.output, args.docs, tool)
        if args.evaluation:
            card = refresh_evaluation(output, Path(args.evaluation), docs, args.command)
            print(json.dumps(card["evaluation"]["beats_identity"]))
            return 0
        card = assemble(Path(args.work), output, docs)
    except ImusicError as exc:
        return report_error(exc, tool)
    print(json.dumps({"name": card["name"], "parameters": card["sizes"]["parameters"]}, indent=2))
    print(f"model: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _portable(settings: dict) -> dict:
    """Settings as a shipped card may hold them: soundfonts by file name, not by a path of the build machine."""
    if "soundfonts" in settings:
        settings = {**settings, "soundfonts": [Path(str(font)).name for font in settings["soundfonts"]]}
    return settings
