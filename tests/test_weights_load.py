"""load_model on our model directory and on the transformers layout; bad input gives CheckpointError naming it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import CheckpointError, ConfigError
from engine.instructions import format_prompt
from engine.weights import load_model


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    """A private copy of the tiny model directory that a test may damage."""
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_our_model_dir_loads_with_its_card(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", dtype="fp32")
    card = model.card
    assert card.name == "tiny-random"
    assert (card.sample_rate, card.frame_rate, card.num_codebooks, card.card) == (16000, 50.0, 4, 64)
    assert card.stems == ("Drums", "Bass", "Piano", "Guitar")
    assert format_prompt("extract", "Drums", card) == "Music piece. Instruct: Only Drums."
    assert format_prompt("remove", "Bass", card) == "Music piece. Instruct: No Bass."
    assert format_prompt("add", "Piano", card) == "Music piece. Instruct: Add Piano."
    assert card.has_adapter
    assert card.window_seconds == pytest.approx(10.0)  # 501 condition frames = 500 frames + the special token
    assert model.device == torch.device("cpu") and model.dtype == torch.float32


def test_tiny_model_has_the_contract_shape(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu", dtype="fp32").lm
    assert (lm.cfg.num_layers, lm.cfg.dim, lm.cfg.card, lm.cfg.num_codebooks) == (2, 64, 64, 4)
    assert lm.fusion_cfg.cond_frames == 501
    assert lm.emb[0].weight.shape == (65, 64)


def test_adapter_is_loaded_exactly_as_saved(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu", dtype="fp32").lm
    saved = load_file(str(tiny_model_dir / "adapter" / "adapter.safetensors"))
    assert set(saved) == set(lm.adapter_state_dict())
    for name, tensor in lm.adapter_state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_tiny_adapter_gates_and_lora_are_nonzero(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu", dtype="fp32").lm
    assert (lm.fusion.gates != 0).all()
    lora_b = [t for n, t in lm.adapter_state_dict().items() if n.endswith("lora_b")]
    assert lora_b and all((t != 0).any() for t in lora_b)


def test_base_weights_equal_the_transformers_checkpoint(tiny_model_dir):
    lm = load_model(tiny_model_dir, device="cpu", dtype="fp32").lm
    raw = load_file(str(tiny_model_dir / "base" / "model.safetensors"))
    assert torch.equal(lm.emb[2].weight, raw["decoder.model.decoder.embed_tokens.2.weight"])
    assert torch.equal(lm.layers[1].ffn.fc1.weight, raw["decoder.model.decoder.layers.1.fc1.weight"])
    assert torch.equal(
        lm.layers[0].cross_attn.q.weight, raw["decoder.model.decoder.layers.0.encoder_attn.q_proj.weight"]
    )
    assert torch.equal(lm.text_proj.bias, raw["enc_to_dec_proj.bias"])


def test_transformers_layout_loads_as_a_base_without_adapter(tiny_model_dir):
    model = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32")
    assert model.lm.fusion is None
    assert not model.card.has_adapter
    assert model.card.provenance["layout"] == "transformers"


def test_a_transformers_checkpoint_holding_more_layers_than_its_config_is_refused(tiny_model_dir, tmp_path):
    """transformers drops the weights its config has no place for: the first layers loaded, the rest went unsaid."""
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir / "base", base)
    config = json.loads((base / "config.json").read_text())
    layers = config["decoder"]["num_hidden_layers"]
    assert layers >= 2
    config["decoder"]["num_hidden_layers"] = layers - 1
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError, match=rf"holds .* that its config.json does not have: .*layers\.{layers - 1}\."
    ):
        load_model(base, device="cpu", dtype="float32")


def test_a_transformers_checkpoint_in_sharded_torch_pickles_loads_its_codec_exactly_and_is_described(tmp_path):
    """pytorch_model-0000N-of-0000M.bin with their index: the codec's fp32 reload read none of them (a bf16 load kept
    bf16-rounded codec weights), and `imusic weights info` stopped on a bare StopIteration."""
    from engine.tools.tiny_models import tiny_musicgen, tiny_tokenizer
    from engine.weights.cli import describe
    from engine.weights.transformers_layout import quiet_transformers

    model, folder = tiny_musicgen(0), tmp_path / "sharded"
    folder.mkdir()
    with quiet_transformers():
        model.config.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
    state = {name: t.detach().clone().contiguous() for name, t in model.state_dict().items()}
    names, weight_map = sorted(state), {}
    for number, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        shard = f"pytorch_model-0000{number}-of-00002.bin"
        torch.save({name: state[name] for name in part}, folder / shard)
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    exact = load_model(folder, device="cpu", dtype="float32").codec.model.state_dict()
    halved = load_model(folder, device="cpu", dtype="bfloat16").codec.model.state_dict()
    assert all(torch.equal(halved[name].float(), exact[name]) for name in exact)
    assert describe(folder)["parameters"]["codec"] > 0


def test_adapter_can_be_given_apart_from_the_base(tiny_model_dir):
    model = load_model(tiny_model_dir / "base", adapter=tiny_model_dir / "adapter", device="cpu", dtype="fp32")
    assert model.card.has_adapter
    assert (model.lm.fusion.gates != 0).all()


def test_the_adapter_changes_the_output(tiny_model_dir):
    with_adapter = load_model(tiny_model_dir, device="cpu", dtype="fp32")
    base = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32")
    states, mask = base.text.encode(["Music piece. Instruct: Only Drums."])
    seq = torch.randint(0, 64, (1, 4, 6), generator=torch.Generator().manual_seed(0))
    cond = torch.randint(0, 64, (1, 4, 6), generator=torch.Generator().manual_seed(1))
    fused = with_adapter.lm(seq, states, mask, cond_codes=cond)
    plain = base.lm(seq, states, mask)
    assert not torch.allclose(fused, plain, atol=1e-3)


def test_dtype_and_device_overrides_are_honoured(tiny_model_dir):
    model = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16
    assert model.lm.emb[0].weight.dtype == torch.bfloat16
    assert model.codec.model.decoder.layers[0].conv.bias.dtype == torch.float32  # the codec stays fp32


def test_missing_default_model_says_so(monkeypatch, tmp_path):
    import engine.weights.loader as weights

    monkeypatch.setattr(weights, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="embedded default model is not installed"):
        load_model(None, device="cpu")


def test_nonexistent_path_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope", device="cpu")


def test_directory_without_a_model_lists_what_it_expects(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path, device="cpu")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(model_copy, name):
    (model_copy / "base" / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_model(model_copy, device="cpu")


def test_missing_base_dir_is_named(model_copy):
    shutil.rmtree(model_copy / "base")
    with pytest.raises(CheckpointError, match="base/"):
        load_model(model_copy, device="cpu")


def test_missing_keys_are_named(model_copy):
    weights = model_copy / "base" / "model.safetensors"
    state = load_file(str(weights))
    del state["decoder.lm_heads.3.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    message = r"missing 1 weight that its config\.json needs: decoder\.lm_heads\.3\.weight"
    with pytest.raises(CheckpointError, match=message):
        load_model(model_copy, device="cpu")


def test_wrong_shape_is_named(model_copy):
    weights = model_copy / "base" / "model.safetensors"
    state = load_file(str(weights))
    state["decoder.model.decoder.layers.1.fc2.weight"] = torch.zeros(64, 100)
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.1\.fc2\.weight has shape \(64, 100\)"):
        load_model(model_copy, device="cpu")


def test_adapter_of_another_shape_is_refused(model_copy):
    weights = model_copy / "adapter" / "adapter.safetensors"
    state = load_file(str(weights))
    state["fusion.gates"] = torch.zeros(5)
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="fusion.gates"):
        load_model(model_copy, device="cpu")


def test_adapter_missing_tensors_are_named(model_copy):
    weights = model_copy / "adapter" / "adapter.safetensors"
    state = load_file(str(weights))
    del state["fusion.pos_emb"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="fusion.pos_emb"):
        load_model(model_copy, device="cpu")


def test_corrupt_model_card_is_a_checkpoint_error(model_copy):
    (model_copy / "model_card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model_card.json"):
        load_model(model_copy, device="cpu")


def test_a_card_whose_stems_are_not_a_list_of_names_is_refused_not_read_letter_by_letter(model_copy):
    card_path = model_copy / "model_card.json"
    card = json.loads(card_path.read_text())
    for bad in ("Drums", ["Drums", 3], ["Drums", " "], []):  # []: read as "the official four", without a word
        card_path.write_text(json.dumps({**card, "stems": bad}))
        with pytest.raises(CheckpointError, match="'stems' must be a non-empty list of stem names"):
            load_model(model_copy, device="cpu")


def test_an_adapter_on_a_base_it_does_not_fit_names_the_base_it_was_trained_on(tiny_model_dir, tmp_path):
    from engine.tools.tiny_models import TINY_DIM, TINY_LAYERS, write_transformers_layout

    wider = write_transformers_layout(tmp_path / "wider", num_layers=TINY_LAYERS, dim=2 * TINY_DIM)
    with pytest.raises(CheckpointError, match=f"it was trained on a base of {TINY_LAYERS} layers x {TINY_DIM}"):
        load_model(wider, tiny_model_dir / "adapter", device="cpu")


def test_an_adapter_whose_tensors_disagree_with_its_own_json_says_that_not_the_base(model_copy):
    """lora_rank 16 in adapter.json over rank-32 tensors was said as "does not fit this base model (2 layers x 64);
    it was trained on a base of 2 layers x 64": the base is the one it was trained on."""
    meta_path = model_copy / "adapter" / "adapter.json"
    meta = json.loads(meta_path.read_text())
    meta["fusion"]["lora_rank"] = meta["fusion"]["lora_rank"] // 2
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not match its own adapter\.json .*lora_a has shape") as refused:
        load_model(model_copy, device="cpu")
    assert "trained on" not in str(refused.value)


def test_adapter_json_of_another_format_is_refused(model_copy):
    meta_path = model_copy / "adapter" / "adapter.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = "something-else"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="adapter"):
        load_model(model_copy, device="cpu")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("version", "x", "format version that is no whole number: 'x'"),
        ("stems", "Bass", "'stems' must be a non-empty list of stem names, got 'Bass'"),
        ("stems", [], "'stems' must be a non-empty list of stem names"),
        ("fusion", 3, "'fusion' must be an object"),
        ("training", "x", "'training' must be an object, got 'x'"),
        ("training", {"input_rms_db": "loud"}, "training.input_rms_db must be a number, got 'loud'"),
        ("training", {"window_s": 0}, "training.window_s must be above 0 s, got 0"),
        ("training", {"input_rms_db": -1000}, "training.input_rms_db must be from -80 to 0 dBFS, got -1000"),
        ("instruction_verbs", 5, "'instruction_verbs' must be an object of operation -> verb, got 5"),
        ("instruction_verbs", {"add": 1}, "'instruction_verbs' must be an object of operation -> verb"),
        ("instruction_template", ["x"], "'instruction_template' must be text, got \\['x'\\]"),
    ],
)
def test_a_damaged_adapter_json_is_named_field_by_field(model_copy, field, value, says):
    from engine.weights.adapter_format import read_adapter_meta

    meta_path = model_copy / "adapter" / "adapter.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), field: value}))
    with pytest.raises(CheckpointError, match=says):
        read_adapter_meta(model_copy / "adapter")


@pytest.mark.parametrize(
    ("version", "says"),
    [(99, "format version 99; this imusic reads up to"), ("1", "a format version that is no whole")],
)
def test_a_model_card_of_a_later_format_is_refused(model_copy, version, says):
    """ "version": 99 loaded and edited without a word."""
    card_path = model_copy / "model_card.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "version": version}))
    with pytest.raises(CheckpointError, match=f"model_card.json has {says}"):
        load_model(model_copy, device="cpu")


def test_a_model_cards_instruction_format_of_the_wrong_kind_is_named(model_copy):
    card_path = model_copy / "model_card.json"
    card_path.write_text(json.dumps({**json.loads(card_path.read_text()), "instruction_verbs": ["extract"]}))
    with pytest.raises(CheckpointError, match="model_card.json: 'instruction_verbs' must be an object"):
        load_model(model_copy, device="cpu")


@pytest.mark.parametrize("value", ["four", 2.5, 0, None, True, float("inf")])
def test_a_decoder_config_field_that_is_no_count_is_named(model_copy, value):
    """ "num_hidden_layers": "four" was a ValueError traceback from int()."""
    config_path = model_copy / "base" / "config.json"
    config = json.loads(config_path.read_text())
    config["decoder"]["num_hidden_layers"] = value
    config_path.write_text(json.dumps(config))
    says = "lacks 'num_hidden_layers'" if value is None else "'num_hidden_layers' must be a whole number above 0"
    with pytest.raises(CheckpointError, match=says):
        load_model(model_copy, device="cpu")


def test_a_tokenizer_file_of_another_shape_is_a_checkpoint_error(model_copy):
    """Valid JSON, not a tokenizer: KeyError 'added_tokens', a traceback in every command that loads a model."""
    (model_copy / "base" / "tokenizer.json").write_text('{"x": 1}')
    with pytest.raises(CheckpointError, match="cannot read the tokenizer in"):
        load_model(model_copy, device="cpu")


def test_sharded_safetensors_load_like_one_file(tiny_model_dir, tmp_path):
    from engine.tools.tiny_models import tiny_musicgen
    from engine.weights.transformers_layout import quiet_transformers

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir / "base", sharded)
    (sharded / "model.safetensors").unlink()
    hf_model = tiny_musicgen(seed=0)
    with quiet_transformers():
        hf_model.save_pretrained(sharded, max_shard_size="1MB")
    assert (sharded / "model.safetensors.index.json").is_file()
    whole = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32").lm.state_dict()
    split = load_model(sharded, device="cpu", dtype="fp32").lm.state_dict()
    assert all(torch.equal(whole[name], split[name]) for name in whole)


def test_missing_shard_is_named(tiny_model_dir, tmp_path):
    from engine.tools.tiny_models import tiny_musicgen
    from engine.weights.transformers_layout import quiet_transformers

    sharded = shutil.copytree(tiny_model_dir / "base", tmp_path / "sharded")
    (sharded / "model.safetensors").unlink()
    with quiet_transformers():
        tiny_musicgen(seed=0).save_pretrained(sharded, max_shard_size="1MB")
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(sharded, device="cpu")


def test_pytorch_model_bin_loads_like_safetensors(tiny_model_dir, tmp_path):
    legacy = shutil.copytree(tiny_model_dir / "base", tmp_path / "legacy")
    state = load_file(str(legacy / "model.safetensors"))
    (legacy / "model.safetensors").unlink()
    torch.save(state, legacy / "pytorch_model.bin")
    whole = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32").lm.state_dict()
    old = load_model(legacy, device="cpu", dtype="fp32").lm.state_dict()
    assert all(torch.equal(whole[name], old[name]) for name in whole)


def test_melody_checkpoints_are_refused_with_the_reason(model_copy):
    config_path = model_copy / "base" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_type"] = "musicgen_melody"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="melody.*cross-attention"):
        load_model(model_copy, device="cpu")


def test_save_model_dir_round_trips(tiny_model_dir, tmp_path):
    from engine.weights import save_model_dir

    model = load_model(tiny_model_dir, device="cpu", dtype="fp32")
    trained = {"window_s": 0.2, "input_rms_db": -20.0}  # what an adapter's training records: the Editor reads both
    out = save_model_dir(
        tmp_path / "saved",
        model.lm,
        model.codec,
        model.text,
        name="round-trip",
        stems=model.card.stems,
        provenance={"run": "test"},
        training=trained,
    )
    again = load_model(out, device="cpu", dtype="fp32")
    assert again.card.name == "round-trip" and again.card.stems == model.card.stems
    assert again.card.training_facts() == trained
    resaved = save_model_dir(tmp_path / "resaved", again.lm, again.codec, again.text, name="again",
                             training=again.card.training_facts())  # fmt: skip
    assert load_model(resaved, device="cpu", dtype="fp32").card.training_facts() == trained
    with pytest.raises(CheckpointError, match="training.window_s must be above 0"):
        save_model_dir(tmp_path / "bad", model.lm, model.codec, model.text, name="bad", training={"window_s": 0})
    assert not (tmp_path / "bad").exists()
    from dataclasses import replace

    shape = model.lm.cfg
    model.lm.cfg = replace(
        shape, text_dim=shape.dim
    )  # a width the transformers layout cannot hold: refused, as training does
    try:
        with pytest.raises(ConfigError, match="the text width must differ from the decoder's width"):
            save_model_dir(tmp_path / "same", model.lm, model.codec, model.text, name="same")
    finally:
        model.lm.cfg = shape
    assert not (tmp_path / "same").exists()
    before, after = model.lm.state_dict(), again.lm.state_dict()
    assert set(before) == set(after)
    assert all(torch.equal(before[n], after[n]) for n in before)
    wav = torch.randn(1, 1, 3200, generator=torch.Generator().manual_seed(0)) * 0.2
    assert torch.equal(model.codec.encode(wav), again.codec.encode(wav))
    prompt = ["Music piece. Instruct: Only Drums."]
    torch.testing.assert_close(model.text.encode(prompt)[0], again.text.encode(prompt)[0])


def test_fresh_adapters_start_as_the_official_init_and_change_nothing(tiny_model_dir):
    from engine.model.config import FusionConfig

    base = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32")
    fresh = load_model(tiny_model_dir / "base", device="cpu", dtype="fp32", fusion=FusionConfig(lora_rank=4))
    lm = fresh.lm
    assert (lm.fusion.gates == 0).all()
    assert all((t == 0).all() for n, t in lm.adapter_state_dict().items() if n.endswith("lora_b"))
    assert all((t != 0).any() for n, t in lm.adapter_state_dict().items() if n.endswith("lora_a"))
    assert lm.fusion.pos_emb.std() > 0.5  # N(0, 1) as the official randn
    assert not fresh.card.has_adapter
    states, mask = base.text.encode(["Music piece. Instruct: Only Drums."])
    seq = torch.randint(0, 64, (1, 4, 6), generator=torch.Generator().manual_seed(0))
    cond = torch.randint(0, 64, (1, 4, 6), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lm(seq, states, mask, cond_codes=cond), base.lm(seq, states, mask))


def test_model_card_refuses_an_operation_it_lacks():
    from engine.errors import InstructionError
    from engine.instructions import vocabulary
    from engine.model.bundle import ModelCard

    card = ModelCard(name="x", sample_rate=16000, frame_rate=50.0, num_codebooks=4, card=64, verbs={"extract": "Only"})
    assert vocabulary(card).operations == ("extract",)
    with pytest.raises(InstructionError, match="cannot add"):
        format_prompt("add", "Drums", card)


def test_legacy_weight_norm_names_load_at_full_precision(model_copy):
    # facebook/musicgen-* store EnCodec's weight norm as weight_g / weight_v (pre-parametrization torch)
    weights = model_copy / "base" / "model.safetensors"
    state = load_file(str(weights))
    legacy = {
        name.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): tensor
        for name, tensor in state.items()
    }
    assert any(name.endswith(".weight_g") for name in legacy)
    save_file(legacy, str(weights), metadata={"format": "pt"})
    model = load_model(model_copy, device="cpu", dtype="bf16")
    expected = state["audio_encoder.decoder.layers.0.conv.parametrizations.weight.original1"]
    assert torch.equal(model.codec.model.decoder.layers[0].conv.parametrizations.weight.original1, expected)


def test_tiny_model_dir_is_reproducible_from_its_seed(tiny_model_dir, tmp_path):
    from engine.tools.tiny_models import build_tiny_model_dir

    again = build_tiny_model_dir(tmp_path / "again", seed=0)
    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    for part in ("base/model.safetensors", "adapter/adapter.safetensors"):
        first, second, third = (load_file(str(d / part)) for d in (tiny_model_dir, again, other))
        assert all(torch.equal(first[n], second[n]) for n in first), part
        assert any(not torch.equal(first[n], third[n]) for n in first), part


@pytest.mark.parametrize("damage", ["garbage", "truncated", "garbage_bin"])
def test_corrupt_base_weights_are_a_checkpoint_error(model_copy, damage):
    weights = model_copy / "base" / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"not a safetensors file" * 100)
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.unlink()
        (model_copy / "base" / "pytorch_model.bin").write_bytes(b"not a torch pickle" * 100)
    with pytest.raises(CheckpointError, match="cannot read the checkpoint in"):
        load_model(model_copy, device="cpu")


@pytest.mark.parametrize("part", ["base/model.safetensors", "adapter/adapter.safetensors"])
def test_weights_holding_nan_are_refused_naming_the_file(model_copy, part):
    """Flipped bytes (0xFF is a NaN in float32) or a diverged run: the model loaded, and every edit came back as the
    same few finite samples, said as a success."""
    weights = load_file(str(model_copy / part))
    name = sorted(n for n, t in weights.items() if t.is_floating_point())[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(model_copy / part))
    folder = (model_copy / part).parent
    with pytest.raises(CheckpointError, match=f"^{folder}.* holds NaN or infinite weights"):
        load_model(model_copy, device="cpu")


def test_info_on_corrupt_safetensors_is_one_line(model_copy, capsys):
    from bridge.cli import main

    (model_copy / "base" / "model.safetensors").write_bytes(b"not a safetensors file" * 100)
    assert main(["weights", "info", str(model_copy)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable safetensors file" in err


def test_the_editors_vocabulary_comes_from_the_checkpoint(model_copy):
    from engine.editor import Editor
    from engine.errors import InstructionError

    meta_path = model_copy / "adapter" / "adapter.json"
    meta = json.loads(meta_path.read_text())
    meta.update(stems=["Vocals", "Drums"], instruction_template="{verb} the {stem}")
    meta["instruction_verbs"] = {"extract": "Isolate", "remove": "Drop"}
    meta_path.write_text(json.dumps(meta))
    editor = Editor.load(model_copy, device="cpu")
    assert editor.info["stems"] == ["vocals", "drums"] and editor.info["operations"] == ["remove", "extract"]
    assert editor.parse("vox only").prompt == "Isolate the Vocals"
    assert editor.parse("remove the drums").prompt == "Drop the Drums"
    with pytest.raises(InstructionError, match="no piano stem.*vocals, drums"):
        editor.parse("remove the piano")
    with pytest.raises(InstructionError, match="cannot read 'add'"):
        editor.parse("add drums")


def test_peeking_reads_the_vocabulary_that_loading_reads(model_copy, tmp_path):
    from engine.instructions import parse_instruction, vocabulary
    from engine.weights import peek_card

    card_path, meta_path = model_copy / "model_card.json", model_copy / "adapter" / "adapter.json"
    card = json.loads(card_path.read_text())
    card.pop("stems", None)  # as `imusic weights convert --base` writes it: the stems are the adapter's
    card["evaluation"] = {"beats_identity": {"extract": {"mel_ssim": False}}}
    card_path.write_text(json.dumps(card))
    meta = json.loads(meta_path.read_text())
    meta.update(stems=["Vocals", "Drums"], instruction_template="{verb} the {stem}")
    meta_path.write_text(json.dumps(meta))

    peeked, loaded = peek_card(model_copy), load_model(model_copy, device="cpu").card
    assert vocabulary(peeked).stems == loaded.stems == ("Vocals", "Drums")
    assert parse_instruction("only vocals", peeked).prompt == "Only the Vocals"
    assert peeked["evaluation"] == card["evaluation"]  # the folder's own adapter: its card's verdict holds

    other = shutil.copytree(model_copy / "adapter", tmp_path / "other")
    meta.update(stems=["Bass"])
    (other / "adapter.json").write_text(json.dumps(meta))
    peeked = peek_card(model_copy, other)
    assert vocabulary(peeked).stems == load_model(model_copy, other, device="cpu").card.stems == ("Bass",)
    assert "evaluation" not in peeked  # another adapter: the card's verdict says nothing about it


def test_peeking_leaves_to_loading_an_adapter_it_cannot_read(model_copy, tmp_path):
    from engine.weights import peek_card

    ckpt = tmp_path / "official" / "finetuned.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not read by peeking")
    assert peek_card(model_copy, ckpt) is None and peek_card(model_copy, ckpt.parent) is None


def test_peeking_refuses_an_adapter_json_that_loading_refuses_in_its_words(model_copy, tmp_path):
    from engine.weights import peek_card

    other = shutil.copytree(model_copy / "adapter", tmp_path / "other")
    meta = json.loads((other / "adapter.json").read_text())
    (other / "adapter.json").write_text(json.dumps({**meta, "stems": "Drums"}))  # a string: its letters are no stems
    with pytest.raises(CheckpointError, match="'stems' must be a non-empty list of stem names") as peeked:
        peek_card(model_copy, other)
    with pytest.raises(CheckpointError) as loaded:
        load_model(model_copy, other, device="cpu")
    assert str(peeked.value) == str(loaded.value)


def test_a_card_s_mask_depth_is_read_checked_and_judges_only_the_folder_s_own_adapter(model_copy, tmp_path):
    card_path = model_copy / "model_card.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "mask_depth": {"remove": 0.375}}))
    assert load_model(model_copy, device="cpu").card.mask_depth == {"remove": 0.375}
    other = shutil.copytree(model_copy / "adapter", tmp_path / "other")
    assert load_model(model_copy, other, device="cpu").card.mask_depth == {}  # chosen for another adapter's word
    from engine.weights import peek_card

    assert peek_card(model_copy)["mask_depth"] == {"remove": 0.375}
    assert "mask_depth" not in peek_card(model_copy, other)  # read without weights by the same rule
    for bad in ({"remove": 1.5}, {"add": 0.5}, {"remove": "half"}, [0.5]):
        card_path.write_text(json.dumps({**card, "mask_depth": bad}))
        with pytest.raises(CheckpointError, match="mask_depth"):
            load_model(model_copy, device="cpu")


def test_saved_settings_read_back_leniently_for_runs_and_strictly_for_weights():
    from dataclasses import asdict

    from engine.model.config import FusionConfig
    from engine.train.config import TrainConfig

    fusion = FusionConfig(lora_rank=8, lora_targets=("q", "k", "v"))
    saved = json.loads(json.dumps(fusion.to_dict()))  # lists on disk
    assert FusionConfig.from_dict(saved) == fusion
    with pytest.raises(ConfigError, match=r"unknown FusionConfig fields: \['newer'\]"):  # a newer version's adapter
        FusionConfig.from_dict({**saved, "newer": 1})
    run = TrainConfig(steps=7, stage="base")
    old_run = {**json.loads(json.dumps(asdict(run))), "setting_since_removed": 3}  # a run saved by an older version
    assert TrainConfig.from_dict(old_run) == run


def test_a_models_identity_follows_its_files_not_its_place_or_its_cards_records(tiny_model_dir, tmp_path, monkeypatch):
    """What a batch ties its results to (weights_identity): another base behind a linked folder, another adapter or
    other weights are another model; a copy elsewhere, or a card measured again, is the same model."""
    from engine.tools.tiny_models import build_tiny_model_dir
    from engine.weights import loader
    from engine.weights.loader import weights_identity

    first = weights_identity(tiny_model_dir)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)  # new mtimes
    assert weights_identity(copy) == first
    card = json.loads((copy / "model_card.json").read_text())
    card["evaluation"] = {"measured": "again"}
    (copy / "model_card.json").write_text(json.dumps(card))
    assert weights_identity(copy) == first  # a re-measurement is no new model
    other = build_tiny_model_dir(tmp_path / "other", seed=1)
    assert weights_identity(tiny_model_dir, adapter=other / "adapter") != first
    linked = tmp_path / "linked"
    linked.mkdir()
    for part in tiny_model_dir.iterdir():
        (linked / part.name).symlink_to(part, target_is_directory=part.is_dir())
    assert weights_identity(linked) == first
    (linked / "base").unlink()
    (linked / "base").symlink_to(other / "base", target_is_directory=True)  # another base behind the link
    assert weights_identity(linked) != first
    monkeypatch.setattr(loader, "WHOLE_HASH_BYTES", 1000)  # every weight file "large": its size, start, end, samples
    monkeypatch.setattr(loader, "_EDGE_BYTES", 100)
    monkeypatch.setattr(loader, "_SAMPLE_BYTES", 16)
    assert weights_identity(copy) == weights_identity(tiny_model_dir) != weights_identity(other)
    assert weights_identity(tmp_path / "nowhere") is None


def test_a_large_checkpoint_that_differs_only_between_its_start_and_end_is_another_model(tmp_path, monkeypatch):
    """A safetensors file of one shape has the same header, and its tensors sorted by name put the frozen codec first
    and T5 last: a fine-tuned decoder changes only the middle. Two such bases had one identity."""
    from engine.weights import loader
    from engine.weights.loader import weights_identity

    monkeypatch.setattr(loader, "WHOLE_HASH_BYTES", 1 << 20)
    monkeypatch.setattr(loader, "_EDGE_BYTES", 64 << 10)
    body = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(body.tobytes())
        body[3 << 20 : (3 << 20) + (64 << 10)] ^= 1  # a 64 KiB "layer" well inside
    assert weights_identity(tmp_path / "a") != weights_identity(tmp_path / "b")
