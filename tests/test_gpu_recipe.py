"""The embedded model's recipe (engine/train/recipe.py) and its device script, at tiny scale on the CPU: the budget
split, refusals, packing, and the whole recipe end to end through engine/train/gpu_recipe.sh as the device runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, ConfigError
from engine.train.budget import RESERVE_SECONDS, SHARES, STAGE_ORDER, StepBudget, split_budget
from engine.train.pack import META_KEY, PART_BYTES, pack_dir, parts_of, unpack_parts, verify_parts
from engine.train.recipe import MARKER, Recipe
from engine.train.recipe_settings import SMALLEST_STEP, recipe_id

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


# ---- budget ----------------------------------------------------------------------------------------------------------


def test_the_budget_is_split_by_shares_after_the_reserve():
    assert abs(sum(SHARES.values()) - 1.0) < 1e-9 and tuple(SHARES) == STAGE_ORDER
    plan = split_budget(11, SMALLEST_STEP["full"])
    assert plan.total == 660
    assert abs(sum(plan.seconds.values()) - (660 - RESERVE_SECONDS)) < 1e-6
    assert plan.seconds["codec"] > plan.seconds["base"] > plan.seconds["adapters"] > plan.seconds["data"]
    # stages already done give their share to the rest
    later = split_budget(11, SMALLEST_STEP["full"], ("adapters", "eval", "pack"))
    assert set(later.seconds) == {"adapters", "eval", "pack"}
    assert later.seconds["adapters"] > 2 * plan.seconds["adapters"]


def test_a_budget_too_small_for_one_step_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="too small for one step.*codec.*give at least"):
        split_budget(0.5, SMALLEST_STEP["full"])
    for minutes in (0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="must be a positive number"):
            split_budget(minutes, SMALLEST_STEP["tiny"])
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match="too small"):
        Recipe(run, budget_minutes=0.4, scale="tiny", progress=False).run()
    assert not (run / "data").exists()  # nothing was started


def test_a_cuda_run_on_a_machine_without_cuda_is_refused_in_one_line_before_anything_starts(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    from engine.train.recipe import main

    run = tmp_path / "run"
    assert main(["run", "-o", str(run), "--device", "cuda", "--budget-minutes", "1", "--scale", "tiny"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m engine.train.recipe: error: no CUDA device here (torch ")
    assert not run.exists()


def test_the_step_budget_shortens_the_schedule_to_the_deadline_and_never_below_the_step(monkeypatch):
    from types import SimpleNamespace

    import engine.train.budget as budget_module

    now = [1000.0]
    monkeypatch.setattr(budget_module, "time", SimpleNamespace(time=lambda: now[0]))  # this module's clock only
    assert StepBudget(None, 0).fit(10, 1000) == 1000
    budget = StepBudget(1010.0, 0, every=1, warm=0)
    now[0] = 1002.0  # two steps took 2 s; 8 s left, less the 3 % margin, hold 7 more
    assert budget.fit(2, 1000) == 9
    assert budget.fit(2, 5) == 5  # never past the schedule
    now[0] = 1011.0
    assert budget.fit(7, 1000) == 7  # past the deadline: stop at this step
    resumed = StepBudget(1020.0, 100, every=1, warm=0)  # a resumed session measures its own steps from step 100
    now[0] = 1015.0
    assert resumed.fit(104, 1000) == 104 + int(0.97 * 5 / 1.0)


def test_a_stage_s_slow_first_steps_do_not_set_its_schedule(monkeypatch):
    # On an accelerator a stage's first step loads libraries and kernels: seconds, against 40 ms for the steps after.
    from types import SimpleNamespace

    import engine.train.budget as budget_module

    now = [1000.0]
    monkeypatch.setattr(budget_module, "time", SimpleNamespace(time=lambda: now[0]))
    budget = StepBudget(1075.0, 0, every=5)
    fitted = 10_000
    for step in range(1, 21):
        now[0] += 3.0 if step == 1 else 0.04
        fitted = budget.fit(step, fitted)
    left = 1075.0 - now[0]
    assert abs(fitted - (20 + 0.97 * left / 0.04)) < 3  # the rate of the steps after the warm ones: about 1750 steps
    # The clock still stops the stage at the deadline, warm steps or not
    now[0] = 1076.0
    assert budget.fit(21, fitted) == 21


# ---- packing ---------------------------------------------------------------------------------------------------------


def test_pack_unpack_round_trip_is_bf16_exact_and_parts_fit_the_limit(tmp_path):
    assert PART_BYTES <= 16 * MIB
    src = tmp_path / "stage"
    (src / "model").mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "w": torch.randn(300, 400, generator=generator),
        "half": torch.randn(50, generator=generator).half(),
        "count": torch.arange(10, dtype=torch.int64),
    }
    save_file(tensors, str(src / "model" / "model.safetensors"), metadata={"format": "pt"})
    (src / "model" / "config.json").write_text('{"a": 1}')
    (src / "checkpoints").mkdir()
    (src / "checkpoints" / "big.pt").write_bytes(b"x" * 1000)
    limit = 64 * 1024
    parts = pack_dir(src, tmp_path / "packed", "base", exclude=["checkpoints/*"], part_bytes=limit)
    assert len(parts) > 1 and all(p.stat().st_size <= limit for p in parts)
    assert parts == parts_of(tmp_path / "packed", "base")
    # bf16 halves the float32 bytes
    assert sum(p.stat().st_size for p in parts) < 0.6 * (src / "model" / "model.safetensors").stat().st_size

    out = tmp_path / "out"
    unpack_parts(parts, out)
    assert not (out / "checkpoints").exists()
    assert (out / "model" / "config.json").read_text() == '{"a": 1}'
    back = load_file(str(out / "model" / "model.safetensors"))
    for name, original in tensors.items():
        assert back[name].dtype == original.dtype
        if original.is_floating_point():
            expected = original.to(torch.bfloat16).view(torch.int16)
            assert torch.equal(back[name].to(torch.bfloat16).view(torch.int16), expected)  # bit-exact in bf16
            assert torch.equal(back[name], original.to(torch.bfloat16).to(original.dtype))
        else:
            assert torch.equal(back[name], original)
    again = pack_dir(out, tmp_path / "again", "base", part_bytes=limit)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in parts]


def test_more_than_a_hundred_parts_are_found_in_number_order_and_unpack(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(120_000))
    parts = pack_dir(src, tmp_path / "p", "codec", part_bytes=1024)
    assert len(parts) > 100 and parts[100].name == "codec.tar.100"
    assert parts_of(tmp_path / "p", "codec") == parts  # .100 after .99, not after .10
    unpack_parts(parts, tmp_path / "x", restore=False)
    assert (tmp_path / "x" / "a.bin").read_bytes() == (src / "a.bin").read_bytes()


def test_missing_or_damaged_parts_are_refused(tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(5000))
    parts = pack_dir(src, tmp_path / "p", "codec", part_bytes=2048)
    with pytest.raises(CheckpointError, match="incomplete"):
        unpack_parts(parts[1:], tmp_path / "x")
    parts[-1].write_bytes(b"")
    parts[0].write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError):
        unpack_parts(parts, tmp_path / "y")


def test_a_pack_without_its_last_part_or_cut_short_or_changed_is_refused_and_nothing_is_unpacked(tmp_path):
    """A copy killed part way leaves the first parts whole and the last one absent or short: the tar module reads
    such a pack up to where it ends without a word; the manifest catches it."""
    src = tmp_path / "s"
    (src / "model").mkdir(parents=True)
    for index in range(6):
        (src / "model" / f"f{index}.bin").write_bytes(os.urandom(3000))
    parts = pack_dir(src, tmp_path / "p", "base", part_bytes=4 * 1024)
    assert len(parts) > 3
    verify_parts(parts)
    refused = 0
    for cut in range(1, len(parts)):  # the first `cut` parts only
        dest = tmp_path / f"x{cut}"
        try:
            unpack_parts(parts[:cut], dest)
        except CheckpointError as exc:
            assert "incomplete" in str(exc) and not dest.exists()
            refused += 1
        else:  # only the tar's closing zero blocks were in the parts left out: every file is whole
            assert all((dest / "model" / p.name).read_bytes() == p.read_bytes() for p in (src / "model").iterdir())
    assert refused >= 3
    whole = parts[2].read_bytes()
    parts[2].write_bytes(whole[:-700])  # a part copied short: what follows it shifts
    with pytest.raises(CheckpointError, match="incomplete|damaged"):
        verify_parts(parts)
    parts[2].write_bytes(whole)
    data = bytearray(parts[1].read_bytes())
    data[2000] ^= 0xFF  # inside a file's bytes, not a tar header
    parts[1].write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="differs from its manifest"):
        unpack_parts(parts, tmp_path / "y")
    assert not (tmp_path / "y").exists()


# ---- refusals of the recipe --------------------------------------------------------------------------------------


def test_stage_outputs_of_another_recipe_are_refused(tmp_path):
    run = tmp_path / "run"
    (run / "codec").mkdir(parents=True)
    other = recipe_id("full", {"something": "else"})
    (run / "codec" / MARKER).write_text(json.dumps({"recipe": "embedded", "recipe_id": other, "scale": "full"}))
    with pytest.raises(ConfigError, match=f"codec was made by another recipe .*{other}"):
        Recipe(run, budget_minutes=3, scale="tiny", progress=False).run()
    assert not (run / "data").exists()


def test_a_run_that_fails_later_has_already_returned_the_card_of_what_it_finished(tmp_path, monkeypatch):
    def broken(self, deadline):
        raise RuntimeError("the codec stage broke")

    monkeypatch.setattr(Recipe, "_stage_codec", broken)
    out = tmp_path / "OUT"
    out.mkdir()
    recipe = Recipe(tmp_path / "run", budget_minutes=3, scale="tiny", export=out)
    recipe.progress = False
    with pytest.raises(RuntimeError, match="broke"):
        recipe.run()
    card = json.loads((out / "card.json").read_text())
    assert list(card["stages"]) == ["data"] and "codec" in card["missing"]


def test_every_stage_runs_without_cudnn_tf32_and_the_flag_is_put_back(tmp_path, monkeypatch):
    """torch turns cuDNN's TF32 on by default: on a GPU every EnCodec convolution after the codec stage (code pools,
    validation clips, the evaluation's codec) ran in TF32, not the fp32 the bf16-rounded codec's codes are meant in."""
    import torch

    seen = []
    runs = []
    fake_stages(monkeypatch, runs)
    real_base = Recipe._stage_base

    def base(self, deadline):
        seen.append(torch.backends.cudnn.allow_tf32)
        return real_base(self, deadline)

    monkeypatch.setattr(Recipe, "_stage_base", base)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    recipe = Recipe(tmp_path / "run", budget_minutes=3, scale="tiny")
    recipe.progress = False
    recipe.run()
    assert seen == [False] and "base" in runs and torch.backends.cudnn.allow_tf32 is True


# ---- a run cut anywhere: the next one carries on from what is whole ------------------------------------------------


def fake_stages(monkeypatch, runs: list[str]) -> None:
    """Every stage made instant: it writes one file its pack takes (a new random one each time it runs)."""
    from engine.train import recipe as recipe_module

    where = {"codec": f"{recipe_module.CODEC_EXPORT}/codec.bin", "base": f"{recipe_module.RUN_MODEL}/base.bin"}
    where |= {"adapters": f"{recipe_module.RUN_ADAPTER}/adapter.bin", "eval": "report.json", "data": "x.bin"}

    def make(stage):
        def stage_fn(self, deadline):
            runs.append(stage)
            path = self.run_dir / stage / where[stage]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(3000))
            return {}

        return stage_fn

    for stage in where:
        monkeypatch.setattr(Recipe, f"_stage_{stage}", make(stage))


def packs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar.*"))}


def test_a_run_cut_between_a_stage_s_marker_and_its_pack_packs_and_exports_it_next_time(tmp_path, monkeypatch):
    """The marker travels in the pack, so it is written first; a run killed before the pack (or before its copy
    into the export folder ended) left a finished stage whose weights were never returned."""
    runs, out, run = [], tmp_path / "OUT", tmp_path / "run"
    fake_stages(monkeypatch, runs)
    real_pack = Recipe.pack

    def killed_at_base(self, stage):
        if stage == "base":
            raise KeyboardInterrupt  # the kill, after base's marker
        return real_pack(self, stage)

    monkeypatch.setattr(Recipe, "pack", killed_at_base)
    with pytest.raises(KeyboardInterrupt):
        Recipe(run, budget_minutes=3, scale="tiny", export=out, progress=False).run()
    assert (run / "base" / MARKER).is_file() and "base.tar.00" not in packs(out)
    monkeypatch.setattr(Recipe, "pack", real_pack)
    runs.clear()
    Recipe(run, budget_minutes=3, scale="tiny", export=out, progress=False).run()
    assert runs == ["adapters", "eval"]  # base is not trained again: its pack is made from what it finished
    assert set(packs(out)) == {"codec.tar.00", "base.tar.00", "adapters.tar.00", "eval.tar.00"}
    assert packs(out) == packs(run / "packed")
    unpack_parts(parts_of(out, "base"), tmp_path / "base")
    assert (tmp_path / "base" / MARKER).is_file()

    # an exported part cut short (the copy killed) or missing is exported again from the whole pack
    (out / "adapters.tar.00").write_bytes((out / "adapters.tar.00").read_bytes()[:100])
    (out / "codec.tar.00").unlink()
    runs.clear()
    Recipe(run, budget_minutes=3, scale="tiny", export=out, progress=False).run()
    assert runs == [] and packs(out) == packs(run / "packed")


def test_a_damaged_pack_to_restore_runs_its_stage_again_and_what_came_after_it(tmp_path, monkeypatch):
    runs, first = [], tmp_path / "OUT"
    fake_stages(monkeypatch, runs)
    Recipe(tmp_path / "run", budget_minutes=3, scale="tiny", export=first, progress=False).run()
    assert runs == ["data", "codec", "base", "adapters", "eval"]
    base = first / "base.tar.00"
    base.write_bytes(base.read_bytes()[:2000])  # cut short in a copy: a fresh machine cannot restore it
    runs.clear()
    again = Recipe(tmp_path / "run2", budget_minutes=3, scale="tiny", from_packs=first, progress=False)
    again.run()
    # codec restored; base trained again, and the adapters and eval built on the old base are not kept
    assert runs == ["data", "base", "adapters", "eval"]
    log = (tmp_path / "run2" / "recipe.log").read_text()
    assert "base: not restored, it runs again: packed parts base.tar.00... are incomplete" in log
    assert "adapters: stale: the base stage runs again" in log and "codec: restored" in log


def test_a_stage_run_again_alone_drops_the_finished_stages_built_on_its_old_outputs(tmp_path, monkeypatch):
    runs, out, run = [], tmp_path / "OUT", tmp_path / "run"
    fake_stages(monkeypatch, runs)
    Recipe(run, budget_minutes=3, scale="tiny", export=out, progress=False).run()
    (run / "base" / MARKER).unlink()  # base made again, alone (--stages base)
    runs.clear()
    Recipe(run, budget_minutes=3, scale="tiny", export=out, stages=("base",), progress=False).run()
    assert runs == ["base"]
    assert set(packs(out)) == {"codec.tar.00", "base.tar.00"}  # no adapters for an install to pair with the new base
    card = json.loads((out / "card.json").read_text())
    assert set(card["missing"]) == {"adapters", "eval"} and "pack" in card["stages"]


def test_a_run_refused_by_its_plan_discards_nothing(tmp_path, monkeypatch):
    runs, out, run = [], tmp_path / "OUT", tmp_path / "run"
    fake_stages(monkeypatch, runs)
    Recipe(run, budget_minutes=3, scale="tiny", export=out, progress=False).run()
    before = packs(out)
    (run / "base" / MARKER).unlink()
    with pytest.raises(ConfigError, match="too small"):
        Recipe(run, budget_minutes=0.01, scale="tiny", export=out, stages=("base",), progress=False).run()
    assert packs(out) == before and (run / "adapters" / MARKER).is_file()


def test_a_missing_input_stage_is_named(tmp_path):
    with pytest.raises(ConfigError, match="the data stage is missing .*the base stage needs it"):
        Recipe(tmp_path / "run", budget_minutes=3, scale="tiny", stages=("base",), progress=False).run()
    with pytest.raises(ConfigError, match="unknown stage"):
        Recipe(tmp_path / "run", budget_minutes=3, scale="tiny", stages=("mixing",), progress=False)
    with pytest.raises(ConfigError, match="unknown --scale"):
        Recipe(tmp_path / "run", budget_minutes=3, scale="huge", progress=False)


def test_the_recipe_id_follows_the_settings():
    from engine.train.recipe_settings import SCALES

    assert recipe_id("tiny", SCALES["tiny"]) == recipe_id("tiny", json.loads(json.dumps(SCALES["tiny"])))
    assert recipe_id("tiny", SCALES["tiny"]) != recipe_id("full", SCALES["full"])
    faster = {**SCALES["full"], "eval": {**SCALES["full"]["eval"], "workers": 3}}  # speed only: the same outputs
    other = {**SCALES["full"], "eval": {**SCALES["full"]["eval"], "batch": 8}}
    assert recipe_id("full", faster) == recipe_id("full", SCALES["full"]) != recipe_id("full", other)


# ---- the whole recipe, through the device script --------------------------------------------------------------------


def test_a_failed_preflight_is_logged_and_the_full_recipe_runs_anyway(tmp_path):
    # a stand-in python: the preflight (the tiny run) fails, the full run records its arguments
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1" = -c ]; then exec "{sys.executable}" "$@"; fi\n'
        f'echo "$*" >> "{calls}"\n'
        'case "$*" in *imusic-preflight*) echo "Traceback: cuda broke" >&2; exit 1;; esac\n'
    )
    stub.chmod(0o755)
    env = {**os.environ, "WHEELS": "0", "PYTHON": str(stub), "DEVICE": "cpu", "RUN_DIR": str(tmp_path / "run")}
    out = tmp_path / "OUT"
    result = subprocess.run(
        ["bash", "engine/train/gpu_recipe.sh", str(out), "5"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    preflight, full = calls.read_text().splitlines()
    assert "--scale tiny" in preflight and "--scale full" in full and "--budget-minutes 5" in full
    log = (out / "run.log").read_text()
    assert "PREFLIGHT FAILED (exit 1, above); running the full recipe anyway" in log
    assert "recipe exit 0; preflight exit 1; returned:" in log


def test_the_device_script_runs_the_whole_recipe_at_tiny_scale_on_cpu(tmp_path):
    out, run = tmp_path / "OUT", tmp_path / "run"
    env = {
        **os.environ,
        "WHEELS": "0",
        "PREFLIGHT": "0",
        "SCALE": "tiny",
        "DEVICE": "cpu",
        "PYTHON": sys.executable,
        "RUN_DIR": str(run),
        "OMP_NUM_THREADS": "1",
        "LIMIT_S": "250",  # no budget given: what the command's limit leaves, less the 70 s margin (about 3 min here)
    }
    result = subprocess.run(
        ["bash", "engine/train/gpu_recipe.sh", str(out)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    returned = sorted(p.name for p in out.iterdir())
    assert returned == sorted(
        ["run.log", "card.json", "codec.tar.00", "base.tar.00", "adapters.tar.00", "eval.tar.00"]
    ), returned
    assert len(returned) <= 8 and all((out / n).stat().st_size <= 16 * MIB for n in returned)
    card = json.loads((out / "card.json").read_text())
    assert card["missing"] == [] and set(card["stages"]) == set(STAGE_ORDER)
    for stage in STAGE_ORDER:
        record = card["stages"][stage]
        assert record["recipe_id"] == card["recipe_id"] and record["device"] == "cpu" and record["wall_seconds"] >= 0
    assert card["stages"]["base"]["steps"] == 3 and card["stages"]["data"]["tracks"] == 6
    assert "summary" in card["stages"]["eval"]
    # remove's mask depth is chosen on validation clips before the test songs are scored with it
    depth = card["stages"]["eval"]["mask_depth"]
    assert depth["remove"] in (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    assert card["stages"]["eval"]["mask_depth_clips"] >= 1
    log = (out / "run.log").read_text()
    assert "eval: remove's mask depth" in log
    assert "adapters: done" in log and "pack: done" in log
    budget = float(log.split("its budget: ", 1)[1].split()[0])
    assert 2.5 < budget <= 3.0
    assert "gpu_recipe: recipe exit 0; returned:" in log and log.rstrip().endswith("run.log")  # the log's end is in it
    # the bars the run can judge are in its log and card at once, each met, not met or not measured
    bars = card["stages"]["eval"]["bars"]
    assert [b["bar"] for b in bars][:9] == [
        "test songs: extract beats identity on mel SSIM and log-mel distance",
        "test songs: extract beats a level change on mel SSIM and log-mel distance",
        "test songs: extract beats a noise bed on mel SSIM and log-mel distance",
        "test songs: remove beats identity on mel SSIM and log-mel distance",
        "test songs: remove beats a level change on mel SSIM and log-mel distance",
        "test songs: remove beats a noise bed on mel SSIM and log-mel distance",
        "test songs: add beats identity on log-mel distance",
        "test songs: add beats a level change on log-mel distance",
        "test songs: add beats a noise bed on log-mel distance",
    ]
    assert all(b["met"] in (True, False, None) and f"eval: {b['bar']}: " in log for b in bars)
    # the codec the later stages trained with holds the bf16 values its pack carries and the model ships
    from engine.train.recipe import CODEC_EXPORT

    codec = load_file(run / "codec" / CODEC_EXPORT / "model.safetensors")
    assert all(torch.equal(t, t.to(torch.bfloat16).to(t.dtype)) for t in codec.values() if t.is_floating_point())

    # a second run on a "fresh machine" restores every trained stage from the returned files and trains nothing
    again = subprocess.run(
        [sys.executable, "-m", "engine.train.recipe", "run", "-o", str(tmp_path / "run2"), "--scale", "tiny",
         "--budget-minutes", "3", "--device", "cpu", "--quiet", "--from-packs", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "to run: pack" in again.stdout and "codec: restored" in again.stdout

    # this side: the returned files become the model folder the editor loads
    from engine.editor import Editor
    from engine.train.recipe import install

    model = tmp_path / "default"
    card = install(out, model, tmp_path / "docs")
    assert card["stages"]["adapters"]["steps"] == 3 and card["sizes"]["parameters"]["adapter"] > 0
    # the same card as the CPU recipe's: the shapes of every part, as their configs give them
    assert card["sizes"]["decoder"]["layers"] == 1 and card["sizes"]["codec"]["codebooks"] >= 1
    assert card["stems"] and card["sizes"]["adapter"]["lora_rank"] >= 1
    assert (tmp_path / "docs" / "report.md").is_file()
    assert f"Model **{card['name']}**" in (tmp_path / "docs" / "report.md").read_text()  # the installed model's name
    from safetensors import safe_open

    shipped_base = load_file(model / "base" / "model.safetensors")
    for name, tensor in codec.items():  # the codec that ships is the one the base and adapters trained with
        assert torch.equal(shipped_base[f"audio_encoder.{name}"].to(tensor.dtype), tensor), name
    shipped = sorted(model.rglob("*.safetensors"))
    assert [f.parent.name for f in shipped] == ["adapter", "base"]
    for path in shipped:  # stored in bf16 (what the run returned, half the bytes), plain files any loader reads
        with safe_open(str(path), "pt") as handle:
            assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}  # noqa: SIM118
            assert META_KEY not in (handle.metadata() or {})
    # what ships names no folder of the machine that built it (the repository stands alone)
    for path in [*model.rglob("*.json"), *(tmp_path / "docs").rglob("*.md")]:
        assert str(tmp_path) not in path.read_text(), path
    editor = Editor.load(model, device="cpu")
    assert editor.sample_rate == 16000 and editor.card.mask_depth == {"remove": depth["remove"]}
    assert {p.dtype for p in editor.model.lm.parameters()} == {torch.float32}  # cast on loading
    # the installed card's own verdict is what the editor's notes come from
    verdict = card["evaluation"]["beats_identity"]
    assert editor.card.beats_identity == verdict
    # the same evaluation record as the CPU build writes (default_model.evaluation), made from the run's own report
    assert set(card["evaluation"]) == {"command", "report", "mode", "summary", "beats_identity"}
    assert card["wall_seconds_total"] > 0 and "wall_seconds_total" not in card["recipe"]  # where the CPU card has it
    assert card["evaluation"]["summary"] == json.loads((out / "card.json").read_text())["stages"]["eval"]["summary"]
    # a card.json (or eval pack) from another run beside these packs is refused, and the installed model stays
    other = json.loads((out / "card.json").read_text())
    (out / "card.json").write_text(json.dumps({**other, "recipe_id": "000000other"}))
    with pytest.raises(ConfigError, match=r"come from different recipe runs \(.*card.json 000000other\)"):
        install(out, model, tmp_path / "docs")
    assert Editor.load(model, device="cpu").card.beats_identity == verdict


def test_install_defaults_to_the_shipped_model_folder_and_these_docs_from_any_folder(tmp_path, monkeypatch):
    from engine.train import recipe
    from engine.train.config import EMBEDDED_DOCS
    from engine.train.default_model import REPORT_LINK
    from engine.weights.loader import DEFAULT_MODEL_DIR

    seen = {}

    def fake_install(packs, out, docs):
        seen.update(out=out, docs=docs)
        return {"name": "m", "sizes": {"parameters": {}}}

    monkeypatch.setattr(recipe, "install", fake_install)
    monkeypatch.chdir(tmp_path)  # not the repository: relative defaults would land here
    assert recipe.main(["install", str(tmp_path / "packs")]) == 0
    assert seen == {"out": DEFAULT_MODEL_DIR, "docs": EMBEDDED_DOCS}
    assert (EMBEDDED_DOCS.parent.parent / REPORT_LINK) == EMBEDDED_DOCS / "report.md"


def test_the_run_card_is_written_into_an_export_folder_that_does_not_exist_yet(tmp_path):
    from engine.train.recipe import CARD, Recipe

    recipe = Recipe(run_dir=tmp_path / "run", budget_minutes=1, scale="tiny", export=tmp_path / "out" / "new")
    recipe.run_dir.mkdir(parents=True)
    recipe.card()  # after the data stage, before any pack made the folder
    assert (tmp_path / "out" / "new" / CARD).is_file()


def test_install_names_the_run_s_folders_relative_to_it_and_only_whole_components(tmp_path):
    from engine.train.recipe import run_relative

    root = "/tmp/imusic-run"
    card = tmp_path / "model_card.json"
    card.write_text(json.dumps({
        "data": f"{root}/data/synth", "run": root, "slash": f"{root}/", "other": f"/mnt{root}/x",
        "longer": f"{root}2/x", "dropout": 0.1, "layout": "imusic", "list": [f"{root}/base/model", 3],
        "said": f"-o {root} --scale full", "quote": f'{root}/a "b"',
    }))  # fmt: skip
    report = tmp_path / "report.md"
    report.write_text(f"data `{root}/data/synth`, and `/mnt{root}/x` stays\n")
    run_relative([card, report], root)
    assert json.loads(card.read_text()) == {
        "data": "data/synth", "run": ".", "slash": "./", "other": f"/mnt{root}/x", "longer": f"{root}2/x",
        "dropout": 0.1, "layout": "imusic", "list": ["base/model", 3], "said": "-o . --scale full",
        "quote": 'a "b"',
    }  # fmt: skip
    assert report.read_text() == f"data `data/synth`, and `/mnt{root}/x` stays\n"
    before = card.read_text()
    for nothing in ("", "out", "/"):  # a relative run folder names no machine's folder; "/" is no run folder
        run_relative([card], nothing)
    assert card.read_text() == before
