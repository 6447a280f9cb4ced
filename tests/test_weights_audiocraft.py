"""The audiocraft layout (state_dict.bin + compression_state_dict.bin, T5 from the hub cache) loads to the same model
as the transformers layout of the same weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.errors import CheckpointError
from engine.tools.tiny_models import (
    tiny_musicgen,
    write_audiocraft_layout,
    write_t5_to_hub_cache,
    write_transformers_layout,
)
from engine.weights import detect_layout, load_model


@pytest.fixture(scope="module")
def same_model_two_layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    hf_model = tiny_musicgen(seed=3, causal_codec=False)  # as MusicGen's own codec: a causal one hid a bug
    return (
        write_transformers_layout(root / "transformers", model=hf_model),
        write_audiocraft_layout(root / "audiocraft", model=hf_model),
        hf_model,
    )


@pytest.fixture
def t5_in_cache(same_model_two_layouts, hub_cache):
    write_t5_to_hub_cache(hub_cache.path, model=same_model_two_layouts[2])
    return hub_cache


def test_layout_is_detected(same_model_two_layouts, tmp_path):
    assert detect_layout(same_model_two_layouts[1]) == "audiocraft"
    # a hub snapshot of facebook/musicgen-* holds both layouts' files: a config.json beside audiocraft's weights,
    # without transformers' weights, is still an audiocraft model
    mixed = tmp_path / "snapshot"
    shutil.copytree(same_model_two_layouts[1], mixed)
    shutil.copy(same_model_two_layouts[0] / "config.json", mixed / "config.json")
    assert detect_layout(mixed) == "audiocraft"
    shutil.copy(same_model_two_layouts[0] / "model.safetensors", mixed / "model.safetensors")
    assert detect_layout(mixed) == "transformers"  # both whole: transformers' own files first, as before


def test_decoder_weights_match_the_transformers_layout(same_model_two_layouts, t5_in_cache):
    hf_dir, ac_dir, _ = same_model_two_layouts
    ours_hf = load_model(hf_dir, device="cpu", dtype="fp32").lm.state_dict()
    ours_ac = load_model(ac_dir, device="cpu", dtype="fp32").lm.state_dict()
    assert set(ours_hf) == set(ours_ac)
    for name in ours_hf:
        assert torch.equal(ours_hf[name], ours_ac[name]), name


def test_codec_encodes_and_decodes_identically(same_model_two_layouts, t5_in_cache):
    hf_dir, ac_dir, _ = same_model_two_layouts
    hf_codec = load_model(hf_dir, device="cpu", dtype="fp32").codec
    ac_codec = load_model(ac_dir, device="cpu", dtype="fp32").codec
    wav = torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(0)) * 0.2
    codes = hf_codec.encode(wav)
    assert torch.equal(codes, ac_codec.encode(wav))
    torch.testing.assert_close(hf_codec.decode(codes), ac_codec.decode(codes))
    assert (ac_codec.sample_rate, ac_codec.frame_rate, ac_codec.num_codebooks) == (16000, 50.0, 4)


def test_text_encoder_comes_from_the_cache(same_model_two_layouts, t5_in_cache):
    hf_dir, ac_dir, _ = same_model_two_layouts
    prompt = ["Music piece. Instruct: Only Drums."]
    hf_states, _ = load_model(hf_dir, device="cpu", dtype="fp32").text.encode(prompt)
    ac_states, _ = load_model(ac_dir, device="cpu", dtype="fp32").text.encode(prompt)
    torch.testing.assert_close(hf_states, ac_states)


def test_missing_t5_says_how_to_get_it(same_model_two_layouts, hub_cache):
    with pytest.raises(CheckpointError, match="imusic weights download t5-base"):
        load_model(same_model_two_layouts[1], device="cpu")


def test_missing_codec_file_is_named(same_model_two_layouts, tmp_path, t5_in_cache):
    import shutil

    broken = shutil.copytree(same_model_two_layouts[1], tmp_path / "broken")
    (broken / "compression_state_dict.bin").unlink()
    with pytest.raises(CheckpointError, match="compression_state_dict.bin"):
        load_model(broken, device="cpu")


def test_codec_of_the_wrong_shape_is_named(same_model_two_layouts, tmp_path, t5_in_cache):
    import shutil

    broken = shutil.copytree(same_model_two_layouts[1], tmp_path / "broken")
    package = torch.load(broken / "compression_state_dict.bin", weights_only=True)
    package["best_state"]["encoder.model.13.lstm.weight_ih_l0"] = torch.zeros(3, 3)
    torch.save(package, broken / "compression_state_dict.bin")
    with pytest.raises(CheckpointError, match=r"lstm\.weight_ih_l0 has shape \(3, 3\)"):
        load_model(broken, device="cpu")


def test_lm_missing_keys_are_named(same_model_two_layouts, tmp_path, t5_in_cache):
    import shutil

    broken = shutil.copytree(same_model_two_layouts[1], tmp_path / "broken")
    package = torch.load(broken / "state_dict.bin", weights_only=True)
    del package["best_state"]["linears.2.weight"]
    torch.save(package, broken / "state_dict.bin")
    with pytest.raises(CheckpointError, match=r"heads\.2\.weight"):
        load_model(broken, device="cpu")


def test_the_codec_frame_rate_of_an_audiocraft_folder_is_read_from_its_xp_cfg(same_model_two_layouts, tmp_path):
    import math
    import shutil

    import yaml

    from engine.weights import audiocraft_layout

    audio = same_model_two_layouts[2].config.audio_encoder
    assert audiocraft_layout.frame_rate(same_model_two_layouts[1]) == audio.sampling_rate / math.prod(
        audio.upsampling_ratios
    )
    other = shutil.copytree(same_model_two_layouts[1], tmp_path / "other")
    package = torch.load(other / audiocraft_layout.CODEC_FILE, weights_only=False)
    cfg = yaml.safe_load(package["xp.cfg"])
    cfg["sample_rate"] = 2 * audio.sampling_rate  # a codec of another rate: not MusicGen's 50 Hz
    package["xp.cfg"] = yaml.safe_dump(cfg)
    torch.save(package, other / audiocraft_layout.CODEC_FILE)
    assert audiocraft_layout.frame_rate(other) == pytest.approx(
        2 * audio.sampling_rate / math.prod(audio.upsampling_ratios)
    )


def test_xp_cfg_references_are_resolved_and_a_yes_no_field_left_as_text_is_refused(same_model_two_layouts, tmp_path):
    import shutil

    import yaml

    from engine.weights.audiocraft_layout import CODEC_FILE, load_codec_model, resolve_references

    cfg = {"a": {"b": 3, "loop": "${a.loop}"}, "c": "${a.b}", "d": "x${a.b}y", "e": ["${a.b}"], "f": "${nowhere}"}
    assert resolve_references(cfg) == {
        "a": {"b": 3, "loop": "${a.loop}"},
        "c": 3,  # a whole reference keeps the value's type
        "d": "x3y",
        "e": [3],
        "f": "${nowhere}",  # a reference to nothing stays as written
    }
    broken = shutil.copytree(same_model_two_layouts[1], tmp_path / "broken")
    package = torch.load(broken / CODEC_FILE, weights_only=True)
    xp = yaml.safe_load(package["xp.cfg"])
    del xp["encodec"]["causal"]  # seanet.causal now refers to nothing: bool() of it would say "causal"
    package["xp.cfg"] = yaml.safe_dump(xp)
    torch.save(package, broken / CODEC_FILE)
    with pytest.raises(CheckpointError, match=r"seanet.causal is '\$\{encodec.causal\}', not true or false"):
        load_codec_model(broken)


def test_a_fine_tunes_export_that_names_its_codec_loads_that_codec_from_the_cache(
    same_model_two_layouts, tmp_path, t5_in_cache
):
    """audiocraft's export of a fine-tuned LM writes compression_state_dict.bin as {"pretrained":
    "facebook/encodec_32khz"}: it was refused as "not an audiocraft release checkpoint"."""
    import math
    import shutil

    from engine.weights import audiocraft_layout

    hf_dir, ac_dir, hf_model = same_model_two_layouts
    tuned = shutil.copytree(ac_dir, tmp_path / "tuned")
    torch.save({"pretrained": "facebook/encodec_32khz"}, tuned / audiocraft_layout.CODEC_FILE)
    from engine.weights.cli import describe

    assert describe(tuned)["parameters"]["codec"] == "facebook/encodec_32khz (from the Hugging Face cache)"
    with pytest.raises(CheckpointError, match="imusic weights download facebook/encodec_32khz"):
        load_model(tuned, device="cpu", dtype="fp32")
    snapshot = t5_in_cache.path / "models--facebook--encodec_32khz" / "snapshots" / ("1" * 40)
    hf_model.audio_encoder.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("1" * 40)
    wav = torch.randn(1, 1, 8000, generator=torch.Generator().manual_seed(0)) * 0.2
    codes = load_model(hf_dir, device="cpu", dtype="fp32").codec.encode(wav)
    assert torch.equal(load_model(tuned, device="cpu", dtype="fp32").codec.encode(wav), codes)
    audio = hf_model.config.audio_encoder
    assert audiocraft_layout.frame_rate(tuned) == audio.sampling_rate / math.prod(audio.upsampling_ratios)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "transformer_lm",
            "positional_embedding",
            "rope",
            r"transformer_lm.positional_embedding is 'rope' \(MusicGen's: 'sin'\)",
        ),
        ("transformer_lm", "norm_first", False, r"transformer_lm.norm_first is False"),
        (
            "codebooks_pattern",
            "modeling",
            "parallel",
            r"codebooks_pattern.modeling is 'parallel' \(MusicGen's: 'delay'\)",
        ),
        ("codebooks_pattern", "delays", [0, 2, 4, 6], r"delay.delays is \[0, 2, 4, 6\] \(MusicGen's: \[0, 1, 2, 3\]\)"),
        ("transformer_lm", "past_context", 250, r"transformer_lm.past_context is 250 \(MusicGen's: None\)"),
        ("fuser", "cross_attention_pos_emb", True, r"fuser.cross_attention_pos_emb is True"),
    ],
)
def test_an_lm_built_otherwise_than_musicgen_is_refused_by_its_xp_cfg(
    same_model_two_layouts, tmp_path, t5_in_cache, section, key, value, message
):
    """Such settings change what the weights compute without changing their names or shapes: it loaded silently."""
    import shutil

    import yaml

    other = shutil.copytree(same_model_two_layouts[1], tmp_path / "other")
    package = torch.load(other / "state_dict.bin", weights_only=True)
    xp = yaml.safe_load(package["xp.cfg"])
    xp[section] = {**xp.get(section, {}), **({key: value} if key != "delays" else {"delay": {"delays": value}})}
    package["xp.cfg"] = yaml.safe_dump(xp)
    torch.save(package, other / "state_dict.bin")
    with pytest.raises(CheckpointError, match=message):
        load_model(other, device="cpu")


def test_a_melody_lm_without_cross_attention_is_refused_as_such(same_model_two_layouts, tmp_path, t5_in_cache):
    import shutil

    melody = shutil.copytree(same_model_two_layouts[1], tmp_path / "melody")
    package = torch.load(melody / "state_dict.bin", weights_only=True)
    package["best_state"] = {k: v for k, v in package["best_state"].items() if ".cross_attention." not in k}
    torch.save(package, melody / "state_dict.bin")
    with pytest.raises(CheckpointError, match="musicgen-melody checkpoints are not supported"):
        load_model(melody, device="cpu")
