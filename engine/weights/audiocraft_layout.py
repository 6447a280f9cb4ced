"""The audiocraft layout (Meta's own MusicGen release): state_dict.bin (LM) + compression_state_dict.bin (EnCodec).

T5 is not inside: the LM names it (t5-base), and we take it from the local Hugging Face cache.
"""

from __future__ import annotations

from pathlib import Path

LM_FILE = "state_dict.bin"
CODEC_FILE = "compression_state_dict.bin"


def is_audiocraft_dir(path: str | Path) -> bool:
    """True when `path` holds audiocraft's state_dict.bin or compression_state_dict.bin."""
    path = Path(path)
    return (path / LM_FILE).is_file() or (path / CODEC_FILE).is_file()
