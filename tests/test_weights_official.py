"""The official finetuned.ckpt: read without the official classes, never running code, mapped to our names."""

from __future__ import annotations

import pickle
import sys

import pytest
import torch

from engine.errors import CheckpointError
from engine.instructions import format_prompt
from engine.tools.tiny_models import official_state_dict, write_official_ckpt
from engine.weights import load_model
from engine.weights.official import map_official_state, read_checkpoint, read_official_adapter
from engine.weights.official import official_state_dict as read_state


def test_fake_checkpoint_references_the_official_classes(official_ckpt):
    raw = official_ckpt.read_bytes()
    assert b"src.models.components.model" in raw and b"Instructor" in raw
    assert "src.models.components.model" not in sys.modules  # the loader has to do without them


def test_state_dict_is_read_without_the_official_classes(official_ckpt):
    data = read_checkpoint(official_ckpt)
    assert "model.cp_transformer.gates" in data["state_dict"]
    assert type(data["hyper_parameters"]["instructor"]).__name__ == "partial"  # stand-in, never called
    assert data["epoch"] == 3


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": Evil()}, path)
    data = read_checkpoint(path)
    assert not marker.exists()
    assert torch.equal(data["state_dict"]["w"], torch.zeros(2))


def test_official_names_map_to_ours(official_ckpt):
    state, facts = map_official_state(read_state(official_ckpt))
    assert state["fusion.pos_emb"].shape == (3, 501, 64)
    assert state["fusion.gates"].shape == (2,)
    assert {"fusion.merge_linear.0.weight", "fusion.merge_linear.1.weight"} <= set(state)
    assert state["layers.1.cross_attn.v.lora_a"].shape == (4, 64)
    assert state["layers.1.cross_attn.v.lora_b"].shape == (64, 4)
    assert {f"layers.0.cross_attn.{p}.weight" for p in "qkv"} <= set(state)
    assert facts == {
        "num_layers": 2,
        "fused_layers": 2,
        "cond_frames": 501,
        "dim": 64,
        "lora_targets": ("q", "v"),
        "lora_rank": 4,
    }


def test_a_checkpoint_whose_text_fusion_does_not_come_through_whole_is_refused(official_ckpt):
    """The mapping keeps the names it knows: LoRA nested another way, a bias on a projection, or a layer's LoRA
    missing would load a model with MusicGen's own cross-attention and no LoRA, and say nothing."""
    state = read_state(official_ckpt)
    peft = "model.peft_model.lm.transformer.base_model.model.layers."
    renested = {
        k.replace(peft, "model.peft_model.lm.base_model.model.transformer.layers."): v for k, v in state.items()
    }
    with pytest.raises(
        CheckpointError, match=r"names this loader does not know \(model.peft_model.lm.base_model.*and 11 more\)"
    ):
        map_official_state(renested)
    biased = {**state, f"{peft}0.cross_attention.q_proj.base_layer.bias": torch.zeros(64)}
    with pytest.raises(CheckpointError, match=r"does not know \(.*q_proj.base_layer.bias"):
        map_official_state(biased)
    lora_b = next(k for k in state if k.startswith(f"{peft}1.") and "lora_B" in k)
    with pytest.raises(CheckpointError, match="text fusion is incomplete: 1 tensors missing"):
        map_official_state({k: v for k, v in state.items() if k != lora_b})
    no_lora = {k: v for k, v in state.items() if "lora_" not in k}
    with pytest.raises(CheckpointError, match="holds no LoRA on the cross-attention"):
        map_official_state(no_lora)


def test_fusion_config_is_inferred_with_the_official_alpha(official_ckpt):
    _, info = read_official_adapter(official_ckpt)
    fusion = info["fusion"]
    assert (fusion.fused_layers, fusion.lora_rank, fusion.lora_alpha, fusion.cond_frames) == (None, 4, 64, 501)
    assert info["stems"] == ["Drums", "Bass", "Piano", "Guitar"]


def test_loads_as_adapter_of_a_base_model(tiny_model_dir, official_ckpt):
    model = load_model(tiny_model_dir / "base", adapter=official_ckpt, device="cpu", dtype="fp32")
    # trained on 5 s clips (its pos_emb holds 10 s of positions), at a level nobody recorded
    assert (model.card.trained_window_s, model.card.input_rms_db) == (5.0, None)
    expected, _ = map_official_state(read_state(official_ckpt))
    lm_state = model.lm.state_dict()
    for name in ("fusion.pos_emb", "fusion.gates", "layers.0.cross_attn.q.lora_b"):
        assert torch.equal(lm_state[name], expected[name]), name
    assert format_prompt("extract", "Drums", model.card) == "Music piece. Instruct: Only Drums."
    assert model.card.has_adapter


def test_cross_attention_qkv_come_from_the_checkpoint_not_the_base(tiny_model_dir, official_ckpt):
    base = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32").lm
    tuned = load_model(tiny_model_dir / "base", adapter=official_ckpt, device="cpu", dtype="fp32").lm
    expected = read_state(official_ckpt)
    key = "model.peft_model.lm.transformer.base_model.model.layers.1.cross_attention.k_proj.weight"
    assert torch.equal(tuned.layers[1].cross_attn.k.weight, expected[key])
    assert not torch.equal(tuned.layers[1].cross_attn.k.weight, base.layers[1].cross_attn.k.weight)
    # everything else stays the base model's
    assert torch.equal(tuned.layers[1].ffn.fc1.weight, base.layers[1].ffn.fc1.weight)


def test_top_layers_only_adapter(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from engine.weights.convert import lm_state_from_transformers

    base = lm_state_from_transformers(load_file(str(tiny_model_dir / "base" / "model.safetensors")))
    path = write_official_ckpt(tmp_path / "top1.ckpt", official_state_dict(base, 2, 64, fused_layers=1))
    model = load_model(tiny_model_dir / "base", adapter=path, device="cpu", dtype="fp32")
    assert model.lm.fusion_cfg.fused_layers == 1
    assert model.lm.fusion.gates.shape == (1,)


def test_checkpoint_for_another_base_size_is_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from engine.weights.convert import lm_state_from_transformers

    base = lm_state_from_transformers(load_file(str(tiny_model_dir / "base" / "model.safetensors")))
    wide = {n: torch.zeros(*[96 if s == 64 else s for s in t.shape]) for n, t in base.items()}
    path = write_official_ckpt(tmp_path / "wide.ckpt", official_state_dict(wide, 2, 96))
    with pytest.raises(CheckpointError, match="musicgen-large|does not fit"):
        load_model(tiny_model_dir / "base", adapter=path, device="cpu")


def test_a_lightning_checkpoint_without_adapter_is_refused(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.layer.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(CheckpointError, match="not an Instruct-MusicGen checkpoint"):
        read_official_adapter(path)


def test_garbage_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "finetuned.ckpt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


def test_plain_pickle_builtins_round_trip():
    # the restricted unpickler still reads ordinary containers
    import io

    from engine.weights.official import RestrictedUnpickler

    data = pickle.dumps({"a": [1, 2.5, (3, "x")], "b": {4, 5}})
    assert RestrictedUnpickler(io.BytesIO(data)).load() == {"a": [1, 2.5, (3, "x")], "b": {4, 5}}


def test_legacy_non_zip_checkpoint_is_read_too(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "epoch": 1}, path, _use_new_zipfile_serialization=False)
    data = read_checkpoint(path)
    assert torch.equal(data["state_dict"]["w"], torch.arange(3.0))
