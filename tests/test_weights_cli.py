"""`imusic weights info|download|convert` and hub-name resolution, against a local fake Hugging Face cache."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bridge.cli import main
from engine.errors import CheckpointError
from engine.weights import load_model


@pytest.fixture
def fake_hub(tiny_model_dir, hub_cache):
    """The hub cache holding "facebook/musicgen-small" (the tiny base)."""
    hub_cache.add("facebook/musicgen-small", tiny_model_dir / "base")
    return hub_cache


def test_info_on_our_model_dir_counts_parameters(tiny_model_dir, capsys):
    assert main(["weights", "info", str(tiny_model_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lm = load_model(tiny_model_dir, device="cpu", dtype="fp32").lm
    params = report["parameters"]
    assert report["layout"] == "imusic"
    assert params["decoder"] == lm.num_parameters(adapters=False)
    assert params["adapter"] == lm.num_parameters(adapters=True)
    assert params["adapter_percent_of_base"] == pytest.approx(100 * params["adapter"] / params["decoder"], abs=0.01)
    assert report["stems"] == ["Drums", "Bass", "Piano", "Guitar"]
    assert "base/model.safetensors" in report["files"]


def test_info_text_names_layout_sizes_and_percent(tiny_model_dir, capsys):
    assert main(["weights", "info", str(tiny_model_dir)]) == 0
    text = capsys.readouterr().out
    assert "layout: imusic" in text
    assert "adapter / base decoder:" in text
    assert "2 layers x 64, 4 codebooks of 64" in text


def test_info_on_official_checkpoint_lists_stand_ins(tiny_model_dir, official_ckpt, capsys):
    assert main(["weights", "info", str(official_ckpt), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "official"
    assert report["parameters"]["adapter"] > 0
    assert report["parameters"]["cross_attention_qkv"] == 2 * 3 * 64 * 64
    assert "src.models.components.model.Instructor" in report["stand_ins"]
    # the frozen decoder inside counts once, as in the transformers layout of the same base
    decoder = sum(p.numel() for p in load_model(tiny_model_dir / "base", device="cpu", dtype="fp32").lm.parameters())
    assert report["parameters"]["decoder_inside_checkpoint"] == decoder
    assert report["parameters"]["adapter_percent_of_base"] == pytest.approx(
        100 * report["parameters"]["adapter"] / decoder, abs=0.01
    )


def test_info_on_missing_path_fails_with_one_line(tmp_path, capsys):
    assert main(["weights", "info", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_hub_name_resolves_from_the_local_cache(fake_hub):
    model = load_model("facebook/musicgen-small", device="cpu", dtype="fp32")
    assert model.card.sample_rate == 16000
    assert model.card.name == "facebook/musicgen-small"
    assert fake_hub.commit in model.card.provenance["path"]


def test_alias_resolves_too(fake_hub):
    from engine.weights.hub import cached_snapshot

    assert cached_snapshot("musicgen-small").name == fake_hub.commit


def test_hub_name_not_in_cache_says_how_to_get_it(fake_hub):
    with pytest.raises(CheckpointError, match="imusic weights download facebook/musicgen-large"):
        load_model("facebook/musicgen-large", device="cpu")


def test_download_of_a_cached_model_prints_its_path(fake_hub, capsys):
    assert main(["weights", "download", "musicgen-small"]) == 0
    assert capsys.readouterr().out.strip().endswith(fake_hub.commit)


def test_download_offline_fails_with_a_clear_message(fake_hub, capsys):
    assert main(["weights", "download", "facebook/musicgen-large"]) == 1
    err = capsys.readouterr().err
    assert "cannot download facebook/musicgen-large" in err and "offline" in err
    assert err.count("\n") == 1


def test_download_without_network_fails_with_a_clear_message(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # nothing listens on port 9 of this machine: the connection is refused at once
    code = main(
        [
            "weights",
            "download",
            "facebook/musicgen-small",
            "--cache-dir",
            str(tmp_path),
            "--endpoint",
            "http://127.0.0.1:9",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot download facebook/musicgen-small" in err
    assert err.count("\n") == 1


def test_convert_official_to_our_adapter_format(tiny_model_dir, official_ckpt, tmp_path, capsys):
    out = tmp_path / "adapter"
    assert main(["weights", "convert", str(official_ckpt), "-o", str(out)]) == 0
    assert (out / "adapter.json").is_file() and (out / "adapter.safetensors").is_file()
    # adapters (+ the cross-attention q/k/v) only: far smaller than the checkpoint, which holds the whole LM
    assert (out / "adapter.safetensors").stat().st_size < official_ckpt.stat().st_size
    direct = load_model(tiny_model_dir / "base", adapter=official_ckpt, device="cpu", dtype="fp32").lm.state_dict()
    converted_model = load_model(tiny_model_dir / "base", adapter=out, device="cpu", dtype="fp32")
    converted = converted_model.lm.state_dict()
    assert all(torch.equal(direct[name], converted[name]) for name in direct)
    assert converted_model.card.trained_window_s == 5.0  # what it trained on stays with it
    # and the base it was trained on: a loading error on another base names it, as it does for the checkpoint
    base = json.loads((out / "adapter.json").read_text())["base"]
    assert base == {"num_layers": 2, "dim": 64, "path": "facebook/musicgen-large"}


def test_convert_with_base_writes_a_model_dir_that_loads_alone(tiny_model_dir, official_ckpt, tmp_path):
    out = tmp_path / "instruct-tiny"
    assert (
        main(
            [
                "weights",
                "convert",
                str(official_ckpt),
                "--base",
                str(tiny_model_dir / "base"),
                "-o",
                str(out),
                "--name",
                "instruct-tiny",
            ]
        )
        == 0
    )
    model = load_model(out, device="cpu", dtype="fp32")
    assert model.card.name == "instruct-tiny"
    assert model.card.has_adapter


def test_convert_refuses_to_overwrite(official_ckpt, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["weights", "convert", str(official_ckpt), "-o", str(tmp_path / "full")]) == 1
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_convert_with_a_missing_base_writes_nothing_so_the_rerun_works(tiny_model_dir, official_ckpt, tmp_path, capsys):
    out = tmp_path / "converted"
    assert main(["weights", "convert", str(official_ckpt), "-o", str(out), "--base", str(tmp_path / "nowhere")]) == 1
    assert not out.exists() and not any(p.name.startswith(".converted") for p in tmp_path.iterdir())
    assert main(["weights", "convert", str(official_ckpt), "-o", str(out), "--base", str(tiny_model_dir / "base")]) == 0
    assert main(["weights", "convert", str(official_ckpt), "-o", str(official_ckpt)]) == 1
    assert "is a file; give a new directory" in capsys.readouterr().err


def test_info_on_transformers_layout_counts_each_part(tiny_model_dir, capsys):
    from safetensors.torch import load_file

    assert main(["weights", "info", str(tiny_model_dir / "base"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stored = load_file(str(tiny_model_dir / "base" / "model.safetensors"))
    codec = sum(t.numel() for n, t in stored.items() if n.startswith("audio_encoder."))
    assert report["layout"] == "transformers"
    assert report["parameters"]["codec"] == codec
    assert report["parameters"]["sample_rate"] == 16000
    assert "adapter" not in report["parameters"]


def test_info_on_audiocraft_layout(tmp_path, capsys):
    from engine.tools.tiny_models import write_audiocraft_layout

    directory = write_audiocraft_layout(tmp_path / "ac")
    assert main(["weights", "info", str(directory), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "audiocraft"
    # the same tiny weights as the transformers layout: the same decoder and codec counts
    from engine.tools.tiny_models import tiny_musicgen

    hf_model = tiny_musicgen(seed=0)
    decoder = sum(p.numel() for n, p in hf_model.named_parameters() if n.startswith(("decoder.", "enc_to_dec_proj.")))
    codec = sum(t.numel() for t in hf_model.audio_encoder.state_dict().values())
    assert report["parameters"]["decoder"] == decoder
    assert report["parameters"]["codec"] == codec
    assert "state_dict.bin" in report["files"]


def test_official_adapter_alone_goes_on_the_cached_large_base(tiny_model_dir, official_ckpt, hub_cache):
    hub_cache.add("facebook/musicgen-large", tiny_model_dir / "base")
    shutil.copy(official_ckpt, hub_cache.add("ldzhangyx/instruct-MusicGen") / "finetuned.ckpt")
    model = load_model("instruct-musicgen", device="cpu", dtype="fp32")
    assert model.card.has_adapter
    explicit = load_model("musicgen-large", adapter="ldzhangyx/instruct-MusicGen", device="cpu", dtype="fp32")
    assert torch.equal(explicit.lm.fusion.gates, model.lm.fusion.gates)
    assert model.card.name == "facebook/musicgen-large"
    assert "musicgen-large" in model.card.provenance["path"]
    assert model.card.provenance["adapter"].endswith("finetuned.ckpt")


def test_official_adapter_without_cached_base_says_what_to_download(official_ckpt, hub_cache):
    with pytest.raises(CheckpointError, match="imusic weights download facebook/musicgen-large"):
        load_model(official_ckpt, device="cpu")


@pytest.mark.parametrize(
    ("remote", "fetched"),
    [
        (["config.json", "model.safetensors", "pytorch_model.bin"], {"config.json", "model.safetensors"}),
        (["config.json", "pytorch_model.bin", "README.md"], {"config.json", "pytorch_model.bin"}),
    ],
)
def test_a_repository_without_safetensors_is_downloaded_with_its_torch_weights(tmp_path, monkeypatch, remote, fetched):
    """The loader reads pytorch_model.bin where a repository has no safetensors; the download fetched no weights."""
    import fnmatch

    import huggingface_hub

    from engine.weights import hub

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()

    def fake_snapshot_download(repo, *, cache_dir=None, allow_patterns=(), endpoint=None):
        for name in remote:
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                (snapshot / name).write_text(name)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert hub.download("facebook/musicgen-small") == snapshot
    assert {p.name for p in snapshot.iterdir()} == fetched
