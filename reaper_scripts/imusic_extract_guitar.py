# @description Instruct: extract guitar
# @version 0.1.0
# @author imusic
# @about
#   Keep only the guitar of each selected item (or the time selection on
#   selected tracks); the result lands on a new track under the source.
#   Needs the imusic engine running (`imusic serve`); installed by `imusic reaper install`.
# @provides
#   [nomain] imusic_lib.py
"""REAPER action: Instruct: extract guitar. The body only loads the shared library and calls it."""

import os
import sys

sys.path.insert(0, os.path.join(RPR_GetResourcePath(), "Scripts", "imusic"))  # noqa: F821 (REAPER's global)
import imusic_lib  # noqa: E402

imusic_lib.run_preset("extract", "guitar")
