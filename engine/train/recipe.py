"""The embedded model's recipe in one call within a wall-clock budget: data, codec, base, adapters, eval, pack.

    imusic train --recipe embedded --budget-minutes 11 -o RUN_DIR [--device cuda] [--scale tiny|full]
    python -m engine.train.recipe run --budget-minutes 11 -o RUN_DIR ...      (the same, without the imusic script)
    python -m engine.train.recipe install PACKS_DIR -o engine/assets/default --docs docs/embedded_model

Every stage is the project's own (synth.synthesize, codec_train.train_codec, loop.train for base and adapters,
evaluate.evaluate); the recipe only chooses their settings per scale (recipe_settings.SCALES), gives each a
deadline from the budget (budget.split_budget; cumulative, so time a stage leaves over goes to the next) and records
what it did. A stage that ends writes RUN_DIR/STAGE/recipe.json (recipe id, settings, device, wall time) and packs
its results into RUN_DIR/packed/ (pack.py: bf16, parts <= 15 MiB), copied at once to --export (the device's $OUT).
A stage whose recipe.json is there already is skipped; one from another recipe (other id) stops the run with a
message, and so does a later stage whose input stage is missing. --from-packs restores finished stages from an
earlier run's packs, so a run cut by its budget continues on a fresh machine; the data are rendered again
(seeded: the same songs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError, ConfigError, DataError, ImusicError, report_error
from engine.eval.report import SPECTROGRAMS
from engine.files import output_folder, read_json_object, user_path, write_json_atomic
from engine.train.budget import STAGE_ORDER, split_budget
from engine.train.config import (
    BASE_SIZES,
    CODEC_EXPORT,
    CODEC_LOG,
    CODEC_SETTINGS,
    CURVES,
    HISTORY,
    RUN_ADAPTER,
    RUN_MODEL,
    history_losses,
)
from engine.train.data import DATASET_JSON, read_dataset_json
from engine.train.recipe_settings import RECIPE, SCALES, SMALLEST_STEP, recipe_id
from engine.weights.names import ADAPTER_DIR, ADAPTER_WEIGHTS, BASE_DIR, WEIGHTS

MARKER = "recipe.json"
CARD = "card.json"
LOG = "recipe.log"

# What each stage's pack holds (pack.py patterns relative to RUN_DIR/STAGE); checkpoints and code pools stay behind.
PACKED = {
    "codec": ([f"*/{CODEC_LOG}", f"*/{CODEC_SETTINGS}", f"{CODEC_EXPORT}/*", MARKER], []),
    "base": ([f"{RUN_MODEL}/*", HISTORY, CURVES, MARKER], []),
    "adapters": ([f"{RUN_ADAPTER}/*", f"{RUN_MODEL}/*", HISTORY, CURVES, MARKER], [f"{RUN_MODEL}/{BASE_DIR}/*"]),
    "eval": (["*.md", "*.json", "*.png", f"{SPECTROGRAMS}/*"], []),
}


@dataclass
class Recipe:
    """One recipe run into `run_dir`."""

    run_dir: Path
    budget_minutes: float
    device: str = "cpu"
    scale: str = "full"
    stages: tuple[str, ...] = STAGE_ORDER
    export: Path | None = None
    from_packs: Path | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ConfigError(f"unknown --scale {self.scale!r}: use {', '.join(SCALES)}")
        unknown = [name for name in self.stages if name not in STAGE_ORDER]
        if unknown:
            raise ConfigError(f"unknown stage(s) {', '.join(unknown)}: use {', '.join(STAGE_ORDER)}")
        self.run_dir = user_path(self.run_dir)
        self.settings = SCALES[self.scale]
        self.id = recipe_id(self.scale, self.settings)
        self.started = time.time()

    # ---- bookkeeping -------------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        line = f"[recipe {time.time() - self.started:7.1f}s] {text}"
        print(line, flush=True)
        with (self.run_dir / LOG).open("a") as log:
            log.write(line + "\n")

    def marker(self, stage: str) -> dict | None:
        """The stage's recipe.json, or None; ConfigError when it is from another recipe."""
        path = self.run_dir / stage / MARKER
        if not path.is_file():
            return None
        try:
            done = read_json_object(path, "", CheckpointError)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}: remove {path.parent} to make it again") from None
        if done.get("recipe_id") != self.id:
            raise ConfigError(
                f"{path.parent} was made by another recipe ({done.get('recipe')} id {done.get('recipe_id')}, scale "
                f"{done.get('scale')}), not this one ({RECIPE} id {self.id}, scale {self.scale}): use a new RUN_DIR "
                f"or remove {path.parent}"
            )
        return done

    def finish(self, stage: str, seconds: float, info: dict) -> dict:
        from engine.device import device_name

        record = {
            "recipe": RECIPE,
            "recipe_id": self.id,
            "scale": self.scale,
            "stage": stage,
            "settings": self.settings.get(stage, {}),
            "device": self.device,
            "device_name": device_name(self.device),
            "wall_seconds": round(seconds, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **info,
        }
        path = self.run_dir / stage / MARKER
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record, sort_keys=False)
        return record

    def pack(self, stage: str) -> list[Path]:
        from engine.train.pack import pack_dir

        if stage not in PACKED:
            return []
        include, exclude = PACKED[stage]
        parts = pack_dir(self.run_dir / stage, self.run_dir / "packed", stage, include=include, exclude=exclude)
        self.export_files(parts)
        return parts

    def export_files(self, files: list[Path]) -> None:
        """Copy a stage's parts into the export folder, each whole or not at all (a run cut mid-copy leaves a pack
        that `verify_parts` refuses, never a short part under a final name)."""
        from engine.files import atomic_path

        if self.export is None:
            return
        self.export.mkdir(parents=True, exist_ok=True)
        for old in self.export.glob(f"{files[0].name.split('.tar.')[0]}.tar.*") if files else []:
            old.unlink()
        for path in files:
            with atomic_path(self.export / path.name) as tmp:
                shutil.copyfile(path, tmp)

    def repair_packs(self) -> None:
        """Pack again the finished stages whose pack a cut run left unwritten or half written (the marker is written
        first: it travels in the pack), and export again those whose exported copy differs."""
        import filecmp

        from engine.train.pack import parts_of, verify_parts

        for stage in PACKED:
            if self.marker(stage) is None:
                continue
            parts = parts_of(self.run_dir / "packed", stage)
            try:
                verify_parts(parts)
            except CheckpointError:
                self.say(f"{stage}: its pack was not finished: packing it again")
                self.pack(stage)
                continue
            if self.export is None:
                continue
            exported = parts_of(self.export, stage)
            same = [p.name for p in exported] == [p.name for p in parts] and all(
                filecmp.cmp(a, b, shallow=False) for a, b in zip(parts, exported, strict=True)
            )
            if not same:
                self.say(f"{stage}: exporting its pack to {self.export}")
                self.export_files(parts)

    def discard(self, stage: str, why: str) -> None:
        """Forget a finished stage (its marker and packs; its files are remade when it runs)."""
        from engine.train.pack import parts_of

        (self.run_dir / stage / MARKER).unlink(missing_ok=True)
        for folder in (self.run_dir / "packed", self.export):
            for part in parts_of(folder, stage) if folder is not None else []:
                part.unlink()
        self.say(f"{stage}: {why}")

    # ---- the run ------------------------------------------------------------------------------------------------

    def restore_packs(self) -> None:
        """Unpack the finished stages an earlier run returned (--from-packs) where RUN_DIR lacks them."""
        from engine.train.pack import parts_of, unpack_parts

        for stage in ("codec", "base", "adapters", "eval"):
            parts = parts_of(self.from_packs, stage)
            if not parts or self.marker(stage) is not None:
                continue
            shutil.rmtree(self.run_dir / stage, ignore_errors=True)
            try:
                unpack_parts(parts, self.run_dir / stage)
            except CheckpointError as exc:  # cut short in a copy: the stage is trained again rather than the run lost
                self.say(f"{stage}: not restored, it runs again: {exc}")
                continue
            if self.marker(stage) is None:  # also refuses packs of another recipe
                raise CheckpointError(f"the {stage} pack in {self.from_packs} holds no {MARKER}")
            if stage == "adapters":
                self._link_base()
            self.say(f"{stage}: restored from {self.from_packs}")

    def _link_base(self) -> None:
        from engine.files import link_tree

        base = self.run_dir / "base" / RUN_MODEL / BASE_DIR
        target = self.run_dir / "adapters" / RUN_MODEL / BASE_DIR
        if base.is_dir() and not target.exists():
            link_tree(base, target)

    def discard_stale(self) -> None:
        """A stage that runs again makes the finished stages after it stale (they were built on its old outputs):
        their markers and packs go, so nothing installs new weights beside old ones. The data stage renders the same
        songs again (fixed seed, the recipe id's settings), so it makes nothing stale."""
        upstream = [s for s in STAGE_ORDER if s in self.stages and s not in ("data", "pack") and self.marker(s) is None]
        if not upstream:
            return
        for stage in STAGE_ORDER[STAGE_ORDER.index(upstream[0]) + 1 :]:
            if self.marker(stage) is not None:
                self.discard(stage, f"stale: the {upstream[0]} stage runs again, so this one must run after it")

    def plan(self) -> tuple[list[str], dict[str, float]]:
        """(stages to run, cumulative deadline per stage); ConfigError for a missing input or a too-small budget."""
        todo = [s for s in STAGE_ORDER if (s in self.stages or s == "pack") and self.marker(s) is None]
        for stage in [s for s in todo if s != "pack"]:  # pack lists the packs there are, of whatever stages finished
            absent = [s for s in STAGE_ORDER[: STAGE_ORDER.index(stage)] if s not in todo and self.marker(s) is None]
            if absent:
                raise ConfigError(
                    f"the {absent[0]} stage is missing from {self.run_dir} (the {stage} stage needs it): run it first "
                    f"(--stages {absent[0]}) or restore it from an earlier run's packs (--from-packs DIR)"
                )
        if todo[:1] == ["data"] and all(s == "pack" for s in todo[1:]):
            todo = todo[1:]  # every stage that reads the data is done: nothing to render it for
        plan = split_budget(self.budget_minutes, SMALLEST_STEP[self.scale], tuple(todo))
        deadlines, clock = {}, self.started
        for stage in todo:
            clock += plan.seconds[stage]
            deadlines[stage] = clock
        return todo, deadlines

    def run(self) -> dict:
        import torch

        # cuDNN's TF32 is on by default: every EnCodec convolution after the codec stage (the code pools, the
        # validation clips, the evaluation's codec) ran in TF32, codes other than the fp32 codec's the base and
        # adapters are meant to learn (the codec stage turns it on for itself alone, then puts this back)
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            return self._run()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    def _run(self) -> dict:
        from engine.device import device_name

        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.from_packs is not None:
            self.restore_packs()
        self.repair_packs()
        self.plan()  # refuses a run that cannot go ahead before anything is discarded
        self.discard_stale()
        todo, deadlines = self.plan()
        self.say(
            f"{RECIPE} recipe {self.id}, scale {self.scale}, device {self.device} ({device_name(self.device)}), "
            f"budget {self.budget_minutes:g} min; to run: {', '.join(todo) or 'nothing'}"
        )
        for stage in todo:
            left = deadlines[stage] - time.time()
            self.say(f"{stage}: start ({left:.0f} s until its deadline)")
            if (self.run_dir / stage).exists() and stage != "pack":
                shutil.rmtree(self.run_dir / stage)  # a stage cut short earlier: made again
            began = time.time()
            info = getattr(self, f"_stage_{stage}")(deadlines[stage])
            record = self.finish(stage, time.time() - began, info)
            parts = self.pack(stage)
            self.card()  # after every stage: a run cut later still returns the records of what it finished
            packed = f"; packed {', '.join(p.name for p in parts)}" if parts else ""
            self.say(f"{stage}: done in {record['wall_seconds']} s{packed}")
        card = self.card()
        self.say(f"done: {self.run_dir / CARD}")
        return card

    # ---- the stages ---------------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data" / "synth"

    def _stage_data(self, deadline: float) -> dict:
        from engine.device import usable_cores
        from engine.train.data.render import TIMGM6MB
        from engine.train.data.synth import synthesize

        cfg = self.settings["data"]
        fonts = [TIMGM6MB]  # TimGM6mb only, by its path (missing, it is named): another soundfont stays unseen
        report = synthesize(
            self.data_dir,
            cfg["tracks"],
            seed=0,
            seconds=cfg["seconds"],
            sample_rate=cfg["sample_rate"],
            soundfonts=fonts,
            renderer=cfg["renderer"],
            workers=usable_cores(),
            progress=self.progress,
        )
        dataset = read_dataset_json(self.data_dir, f"the data stage wrote no {DATASET_JSON} in {self.data_dir}")
        split = {name: len(ids) for name, ids in dataset["split"].items()}
        return {
            "tracks": report.tracks,
            "stems": report.stems,
            "stem_hours": round(report.stem_seconds / 3600, 2),
            "renderer": dataset["renderer"],
            "soundfonts": [Path(f).name for f in dataset["soundfonts"]],
            "split": split,
            "workers": usable_cores(),
        }

    def _stage_codec(self, deadline: float) -> dict:
        from engine.train.codec_train import (
            CodecTrainConfig,
            final_losses,
            forget_preloaded,
            held_out_songs,
            read_log,
            train_codec,
        )

        cfg = self.settings["codec"]
        common = {k: v for k, v in cfg.items() if k != "phases"}
        held_out = held_out_songs(self.data_dir)
        stage_dir, began = self.run_dir / "codec", time.time()
        total_share = sum(phase["share"] for phase in cfg["phases"])
        init, phases, clock = None, [], began
        for number, phase in enumerate(cfg["phases"]):
            clock += (deadline - began) * phase["share"] / total_share
            settings = {**common, **{k: v for k, v in phase.items() if k != "share"}, "device": self.device}
            run_cfg = CodecTrainConfig(**settings, extra={"data": str(self.data_dir), "phase": number})
            if init is not None:
                run_cfg.extra["init_from"] = str(init)
            run = stage_dir / f"phase{number}"
            phase_began = time.time()
            out = train_codec(
                self.data_dir,
                run,
                run_cfg,
                exclude_songs=held_out,
                quiet=not self.progress,
                init_from=init,
                deadline=clock,
            )
            rows = read_log(run)
            phases.append(
                {
                    "steps": run_cfg.steps,
                    "steps_planned": phase["steps"],
                    "wall_seconds": round(time.time() - phase_began, 1),
                    "final_losses": final_losses(rows),
                }
            )
            self.say(f"codec phase {number}: {run_cfg.steps} steps (planned {phase['steps']})")
            init = out
        from engine.train.pack import round_to_bf16

        forget_preloaded()  # the later stages read their own clips
        shutil.copytree(init, stage_dir / CODEC_EXPORT)  # what the pack keeps and the base stage reads
        # rounded to the bf16 values its pack carries and the installed model ships: the base and adapters train on
        # the codes of the codec that ships (the fp32 codec's codes differed from the shipped one's by 0.2-4.6 %)
        round_to_bf16(stage_dir / CODEC_EXPORT / WEIGHTS)
        return {"phases": phases, "held_out_songs": len(held_out)}

    def _train(self, stage: str, base: Path, deadline: float) -> dict:
        from engine.train.config import TrainConfig
        from engine.train.loop import train

        cfg = dict(self.settings[stage])
        extra = {k: cfg.pop(k) for k in BASE_SIZES if k in cfg}
        config = TrainConfig(
            data=str(self.data_dir), base=str(base), stage=stage, device=self.device, extra=extra, **cfg
        )
        result = train(config, self.run_dir / stage, progress=self.progress, deadline=deadline)
        history = result.history
        if not result.outputs:
            raise CheckpointError(f"the {stage} stage ended without exporting its model")
        return {
            "steps": result.step,
            "steps_planned": self.settings[stage]["steps"],
            **history_losses(history),
            "exported": history.get("exported", "the last step"),
            # a loss that was not finite ended it early (loop.NonFiniteLoss): the card says so, not just a short run
            **({"diverged_at": history["diverged_at"]} if "diverged_at" in history else {}),
        }

    def _stage_base(self, deadline: float) -> dict:
        return self._train("base", self.run_dir / "codec" / CODEC_EXPORT, deadline)

    def _stage_adapters(self, deadline: float) -> dict:
        info = self._train("adapters", self.run_dir / "base" / RUN_MODEL, deadline)
        from engine.train.default_model import EMBEDDED_NAME, fusion_gates
        from engine.weights.loader import read_model_card, write_model_card

        # the model this stage finishes is the embedded one: its evaluation and report name it so, not by the run's
        # folders ("base-base-adapters")
        model = self.run_dir / "adapters" / RUN_MODEL
        write_model_card(model, {**read_model_card(model), "name": EMBEDDED_NAME})

        gates = fusion_gates(self.run_dir / "adapters" / RUN_ADAPTER / ADAPTER_WEIGHTS)
        info["fusion_gates"] = [round(g, 5) for g in gates]
        return info

    def _stage_eval(self, deadline: float) -> dict:
        from engine.editor import Editor
        from engine.eval.evaluate import evaluate

        cfg = dict(self.settings["eval"])
        tasks = cfg.pop("tasks")
        # The eager decode step: the CUDA-graph and compiled steps are measured apart (imusic bench, issue #18); this
        # run must not depend on them, and a batch of 32 clips makes the step's overhead small beside the scoring.
        # fp32, as `make model-acceptance` scores the installed model on the CPU: the bars in the log are that verdict
        model = self.run_dir / "adapters" / RUN_MODEL
        editor = Editor.load(model, device=self.device, dtype="float32", decode_step="eager")
        depth = self._remove_depth(editor, model, cfg) if "remove" in tasks else {}
        report = evaluate(
            self.data_dir,
            tasks,
            self.run_dir / "eval",
            editor=editor,
            progress=self.progress,
            optional_metrics=False,
            deadline=deadline,
            **cfg,
        )
        from engine.eval.acceptance import report_bars
        from engine.eval.report import report_summary
        from engine.eval.verdict import beats_unchanged

        summary = report_summary(report)
        for task, part in report.get("tasks", {}).items():
            self.say(f"eval: {task}: {part['clips']['scored']} of {part['clips']['planned']} test clips scored")
        bars = report_bars(summary, "test songs")  # the bars that this run can judge, in the log at once
        for bar in bars:
            verdict = {True: "met", False: "NOT met", None: "not measured"}[bar.met]
            self.say(f"eval: {bar.name}: {verdict} ({bar.measured})")
        return {
            "summary": summary,
            "beats_identity": beats_unchanged(summary),
            "bars": [{"bar": b.name, "measured": b.measured, "met": b.met} for b in bars],
            **depth,
        }

    def _remove_depth(self, editor, model: Path, cfg: dict) -> dict:
        """The new model's remove depth (its card's mask_depth), chosen on validation clips before the test songs are
        scored with it, as `make model-mask-depth` chooses the CPU build's (engine.eval.mask_tune --depth); None, and
        the mask's own depth, where the validation split has no clip to choose on. Returns the eval record's part:
        `mask_depth` as a card holds it and `mask_depth_clips`, or {}."""
        from engine.eval.mask_tune import choose_depth, model_outputs, record_depth
        from engine.mask import DEFAULT_SETTINGS
        from engine.train.data import CLIP_SECONDS
        from engine.weights.loader import MASK_DEPTH

        per_song, seconds = cfg.get("clips_per_song", 1), cfg.get("seconds", CLIP_SECONDS)
        try:
            clips = model_outputs(
                editor, self.data_dir, "remove", per_song, seconds=seconds, limit=DEPTH_CLIPS, batch=cfg.get("batch", 1)
            )
        except DataError as exc:
            self.say(f"eval: remove's mask depth not chosen ({exc}): the mask's own")
            return {}
        chosen = choose_depth(clips, editor.sample_rate, "remove", DEFAULT_SETTINGS["remove"], cfg.get("workers", 0))
        record_depth(model, "remove", chosen["chosen"])
        editor.card.mask_depth = {**editor.card.mask_depth, "remove": chosen["chosen"]}
        row = chosen["depths"][str(chosen["chosen"])]
        self.say(
            f"eval: remove's mask depth {chosen['chosen']} (of {len(clips)} validation clips; mel SSIM "
            f"{row['mel_ssim vs identity'][0]:+.4f}, log-mel distance {row['log_mel_distance vs identity'][0]:+.2f} dB "
            "against the unchanged input)"
        )
        return {MASK_DEPTH: {"remove": chosen["chosen"]}, "mask_depth_clips": len(clips)}

    def _stage_pack(self, deadline: float) -> dict:
        return {"files": sorted(p.name for p in (self.run_dir / "packed").glob("*.tar.*"))}

    def card(self) -> dict:
        """card.json: every finished stage's record (device, wall time, settings, steps, losses), the plan's shares."""
        from engine.train.budget import RESERVE_SECONDS, SHARES

        stages = {stage: self.marker(stage) for stage in STAGE_ORDER}
        card = {
            "recipe": RECIPE,
            "recipe_id": self.id,
            # what the install names the run's folders relative to (run_relative); a relative run folder names none
            RUN_DIR_KEY: str(self.run_dir) if self.run_dir.is_absolute() else "",
            "scale": self.scale,
            "budget_minutes": self.budget_minutes,
            "budget_shares": SHARES,
            "budget_reserve_seconds": RESERVE_SECONDS,
            "stages": {k: v for k, v in stages.items() if v is not None},
            "missing": [k for k, v in stages.items() if v is None],
            "wall_seconds_total": round(sum(v["wall_seconds"] for v in stages.values() if v), 1),
        }
        for folder in (self.run_dir, self.export):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)  # the export folder may not exist before its first pack
                write_json_atomic(folder / CARD, card, sort_keys=False)  # whole, whenever the run is cut
        return card


# ---- this side: install a returned run -------------------------------------------------------------------------------

RUN_DIR_KEY = "run_dir"  # card.json: the run's folder on the machine that ran it


def run_relative(files: list[Path], run_dir: str) -> None:
    """Rewrite text files of an installed run so that they name the run's folders relative to the run ("data/synth",
    "base/model/base"), as the CPU build's relative paths do, not by the path they had on the machine that ran it:
    what ships names no machine's folder. `run_dir` is that absolute path ("" or a relative one: nothing to do). JSON
    files are read, their strings rewritten and written back, so they stay JSON whatever the path holds; other files
    (the report's Markdown) as text. Only whole path components match: "/mnt/tmp/run/x" and "/tmp/run2" are not under
    "/tmp/run". Each file is rewritten atomically, and only where it names the run."""
    import re

    from engine.files import write_bytes_atomic

    root = run_dir.rstrip("/")
    if not root.startswith("/") or root == "/":
        return
    # the run folder as a whole component: under it ("root/x" -> "x") or itself ("root" -> ".")
    named = re.compile(r"(?<![\w./-])" + re.escape(root) + r"(?:/(?=[\w.-])|(?![\w.-]))")

    def relative(text: str) -> str:
        return named.sub(lambda m: "" if m.group(0).endswith("/") else ".", text)

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return relative(value)
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        return value

    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            rewritten = walk(data)
            portable = text if rewritten == data else json.dumps(rewritten, indent=2, ensure_ascii=False) + "\n"
        else:
            portable = relative(text)
        if portable != text:
            write_bytes_atomic(path, portable.encode("utf-8"))


def install(packs: Path, out: Path, docs: Path | None = None, work: Path | None = None) -> dict:
    """Unpack an accelerator run's packs (codec, base, adapters, eval, card.json) into the model folder `out`
    (base/, adapter/, model_card.json: the loader's layout) and the report into `docs`. The model's tensors stay in
    bf16 on disk: the values the run returned, in half the bytes of fp32 (what ships stays far under 40 MB and every
    byte committed stays in the repository forever); the loader casts them to the dtype the model runs in."""
    import tempfile

    from engine.eval.report import REPORT_JSON, REPORT_MD, publish_report
    from engine.files import staged_dir
    from engine.train.default_model import EMBEDDED_NAME, evaluation, model_sizes, model_stems
    from engine.train.pack import parts_of, unpack_parts
    from engine.weights.loader import MASK_DEPTH, card_mask_depth, new_model_card, read_model_card, write_model_card

    packs = Path(packs)
    missing = [stage for stage in ("base", "adapters") if not parts_of(packs, stage)]
    if missing:
        raise CheckpointError(f"{packs} lacks the {' and '.join(missing)} pack(s): the run has not finished them")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        work_dir = Path(tmp)
        for stage in ("codec", "base", "adapters", "eval"):
            if parts_of(packs, stage):
                unpack_parts(parts_of(packs, stage), work_dir / stage, restore=stage not in ("base", "adapters"))
        # Every part installed together must come from one recipe (an --export folder reused by a later run that was
        # cut before its eval would otherwise publish the earlier run's evaluation beside the new model).
        markers = {
            stage: read_json_object(
                work_dir / stage / MARKER, f"the {stage} pack in {packs} holds no {MARKER}: not a recipe stage's pack",
                CheckpointError,
            )
            for stage in ("base", "adapters", "eval")
            if (work_dir / stage).is_dir()
        }  # fmt: skip
        ids = {stage: marker.get("recipe_id") for stage, marker in markers.items()}
        run_card = read_json_object(packs / CARD, "", CheckpointError) if (packs / CARD).is_file() else {}
        if "recipe_id" in run_card:
            ids[CARD] = run_card["recipe_id"]
        if len(set(ids.values())) != 1:
            parts = ", ".join(f"{part} {recipe}" for part, recipe in ids.items())
            raise ConfigError(f"the packs in {packs} come from different recipe runs ({parts}): install one run's")
        with staged_dir(out) as staged:
            shutil.copytree(work_dir / "base" / RUN_MODEL / BASE_DIR, staged / BASE_DIR)
            shutil.copytree(work_dir / "adapters" / RUN_MODEL / ADAPTER_DIR, staged / ADAPTER_DIR)
            own = read_model_card(work_dir / "adapters" / RUN_MODEL)
            # chosen on validation clips by the eval stage, checked by loading's rule
            depth = card_mask_depth(markers.get("eval", {}), work_dir / "eval" / MARKER)
            card = new_model_card(
                EMBEDDED_NAME,
                description=(
                    "The project's own small Instruct-MusicGen, trained by `imusic train --recipe embedded` on one "
                    "accelerator on synthetic General MIDI stems: a codec, a text-to-music base model and the Instruct "
                    "adapters. Whether its edits beat leaving the audio unchanged is in `evaluation.beats_identity`."
                ),
                stems=model_stems(staged),  # by loading's rule, as the CPU build's card (default_model.assemble)
                sizes=model_sizes(staged),
                recipe={k: v for k, v in run_card.items() if k not in ("stages", "wall_seconds_total", RUN_DIR_KEY)},
                stages=run_card.get("stages", {}),
                wall_seconds_total=run_card.get("wall_seconds_total"),  # where the CPU build's card has it too
                provenance=own.get("provenance", {}),
                **({MASK_DEPTH: depth} if depth else {}),
            )
            report = work_dir / "eval" / REPORT_JSON
            if report.is_file():
                own_report = read_json_object(report, "", CheckpointError)
                card["evaluation"] = evaluation(own_report, "imusic train --recipe embedded (its eval stage)")
            write_model_card(staged, card)
            run_relative(sorted(staged.rglob("*.json")), str(run_card.get(RUN_DIR_KEY, "")))
        if docs is not None and (work_dir / "eval").is_dir():
            publish_report(work_dir / "eval", docs, skip=(MARKER,))
            run_relative([docs / name for name in (REPORT_JSON, REPORT_MD) if (docs / name).is_file()],
                         str(run_card.get(RUN_DIR_KEY, "")))  # fmt: skip
    return read_model_card(out)


# Validation clips the eval stage chooses remove's mask depth on (generated in batches, before the test songs; taken
# out of the eval's own time, so few)
DEPTH_CLIPS = 32


# ---- command line --------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's options (shared by `imusic train --recipe` and `python -m engine.train.recipe run`)."""
    group = parser.add_argument_group("the embedded model's recipe (--recipe embedded)")
    group.add_argument("--budget-minutes", type=float, help="wall-clock budget of the whole recipe run")
    group.add_argument("--scale", default=None, choices=tuple(SCALES), help="full (accelerator) or tiny (test)")
    group.add_argument("--stages", default=None, help=f"comma list of stages (default: {','.join(STAGE_ORDER)})")
    group.add_argument("--from-packs", metavar="DIR", help="restore finished stages from an earlier run's packs")
    group.add_argument("--export", metavar="DIR", help="copy each stage's packs and card.json here as it ends")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the recipe from parsed options (`imusic train --recipe embedded ...`)."""
    if getattr(args, "recipe", RECIPE) != RECIPE:
        raise ConfigError(f"unknown --recipe {args.recipe!r}: use {RECIPE}")
    if args.budget_minutes is None:
        raise ConfigError("--budget-minutes is required with --recipe")
    from engine.device import training_device

    recipe = Recipe(
        run_dir=output_folder(args.output),
        budget_minutes=args.budget_minutes,
        device=str(training_device(args.device)),
        scale=args.scale or "full",
        stages=tuple(s.strip() for s in args.stages.split(",")) if args.stages else STAGE_ORDER,
        export=Path(args.export) if args.export else None,
        from_packs=Path(args.from_packs) if args.from_packs else None,
        progress=not args.quiet,
    )
    card = recipe.run()
    print(json.dumps({k: card[k] for k in ("recipe_id", "wall_seconds_total", "missing")}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.train.recipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the recipe (as `imusic train --recipe embedded`)")
    run.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    run.add_argument("--device", default=None, help="cuda, cpu (default: the best available)")
    run.add_argument("--quiet", action="store_true", help="no progress bars (log lines only)")
    add_run_arguments(run)
    inst = sub.add_parser("install", help="unpack a returned run into the model folder and its report into docs")
    inst.add_argument("packs", metavar="PACKS_DIR")
    from engine.train.config import shipped_targets

    inst.add_argument("-o", "--output", help="the model folder (default: the checkout's shipped model)")
    inst.add_argument("--docs", help="where its report goes (default: the checkout's docs)")
    args = parser.parse_args(argv)
    tool = "python -m engine.train.recipe install"
    try:
        if args.command == "run":
            return run_from_args(args)
        output, docs = shipped_targets(args.output, args.docs, tool)
        card = install(Path(args.packs), output, docs)
        print(json.dumps({"name": card["name"], "parameters": card["sizes"]["parameters"]}, indent=2))
        return 0
    except ImusicError as exc:
        return report_error(exc, "python -m engine.train.recipe")


if __name__ == "__main__":
    sys.exit(main())
