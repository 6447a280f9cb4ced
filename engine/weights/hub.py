"""Checkpoints on the Hugging Face hub: download into its standard cache, and find them there offline.

Only the files we read are fetched (transformers layout, tokenizer, or the official finetuned.ckpt), not every file
of a repository (facebook/musicgen-large also holds the audiocraft layout: twice the download).
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.errors import CheckpointError
from engine.weights.names import CONFIG, OFFICIAL_CKPT, WEIGHTS, WEIGHTS_INDEX

# Short names a producer can type; full "owner/name" ids work too.
ALIASES: dict[str, str] = {
    "musicgen-small": "facebook/musicgen-small",
    "musicgen-medium": "facebook/musicgen-medium",
    "musicgen-large": "facebook/musicgen-large",
    "instruct-musicgen": "ldzhangyx/instruct-MusicGen",
    "t5-base": "google-t5/t5-base",
}
OFFICIAL_ADAPTER_REPO = "ldzhangyx/instruct-MusicGen"
TRANSFORMERS_FILES = [
    CONFIG,
    "generation_config.json",
    WEIGHTS,
    "model-*.safetensors",
    WEIGHTS_INDEX,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "preprocessor_config.json",
]
OFFICIAL_FILES = [OFFICIAL_CKPT, "README.md"]
# A repository without safetensors weights holds them as torch pickles (transformers_layout reads both): fetched only
# then, not beside the safetensors most MusicGen repositories also hold (twice the download)
TORCH_WEIGHTS = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def repo_id(name: str) -> str:
    """The hub repository id of a name or alias."""
    return ALIASES.get(name.strip().lower(), name.strip())


def looks_like_hub_name(text: str) -> bool:
    """True for "owner/name" ids and our aliases (not for paths such as ./x/y or /abs/path)."""
    text = text.strip()
    return text.lower() in ALIASES or bool(_HUB_ID.fullmatch(text))


def allow_patterns(name: str) -> list[str]:
    """Files of `name` worth downloading."""
    return OFFICIAL_FILES if repo_id(name).lower() == OFFICIAL_ADAPTER_REPO.lower() else TRANSFORMERS_FILES


def cached_snapshot(name: str, cache_dir: str | Path | None = None) -> Path:
    """The local snapshot directory of `name` in the Hugging Face cache; CheckpointError if it was never downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            repo_id(name), cache_dir=cache_dir, local_files_only=True, allow_patterns=allow_patterns(name)
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        raise CheckpointError(
            f"{name} is neither a local path nor in the Hugging Face cache; download it with "
            f"`imusic weights download {name}` (needs internet) or give the path of a model directory"
        ) from None
    except HFValidationError as exc:
        raise CheckpointError(f"{name!r} is not a valid model name: {exc}") from None
    return Path(path)


def download(name: str, cache_dir: str | Path | None = None, endpoint: str | None = None) -> Path:
    """Download `name` into the Hugging Face cache (or find it there); returns the snapshot directory."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    repo = repo_id(name)
    try:
        path = snapshot_download(repo, cache_dir=cache_dir, allow_patterns=allow_patterns(name), endpoint=endpoint)
        if allow_patterns(name) is TRANSFORMERS_FILES and not any(Path(path).glob("*.safetensors")):
            path = snapshot_download(repo, cache_dir=cache_dir, allow_patterns=TORCH_WEIGHTS, endpoint=endpoint)
    except GatedRepoError:
        raise CheckpointError(
            f"{repo} is gated on huggingface.co: accept its licence there and log in (`hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo} does not exist on huggingface.co (or is private)") from None
    except HFValidationError as exc:
        raise CheckpointError(f"{name!r} is not a valid model name: {exc}") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError, OSError) as exc:
        offline = constants.HF_HUB_OFFLINE or isinstance(exc, OfflineModeIsEnabled)
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1)" if offline else f"{endpoint or 'huggingface.co'} cannot be reached"
        )
        raise CheckpointError(
            f"cannot download {repo}: {why}, and it is not in the local cache. On a machine with internet run "
            f"`imusic weights download {name}` and copy the cache (or the model directory) here"
        ) from None
    except Exception as exc:  # noqa: BLE001 - network stacks raise many types; one clear line for the producer
        raise CheckpointError(f"cannot download {repo}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    return Path(path)


# T5-base's hub ids: newer caches hold it as google-t5/t5-base, older ones under the legacy id (models--t5-base).
T5_REPOS = ("google-t5/t5-base", "t5-base")


def find_t5(cache_dir: str | Path | None = None) -> Path:
    """The cached T5-base (audiocraft checkpoints name it instead of shipping it)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for repo in T5_REPOS:
        try:
            return Path(snapshot_download(repo, cache_dir=cache_dir, local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError):
            continue
    raise CheckpointError(
        "this audiocraft checkpoint uses the T5-base text encoder, which is not in the Hugging Face cache: run "
        "`imusic weights download t5-base` (needs internet), or use the transformers layout, which includes T5"
    )
