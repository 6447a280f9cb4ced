# @description Instruct: engine status
# @version 0.1.0
# @author imusic
# @about
#   Show whether the imusic engine is running, its model and device, and the edits in progress.
#   Needs the imusic engine running (`imusic serve`); installed by `imusic reaper install`.
# @provides
#   [nomain] imusic_lib.py
"""REAPER action: Instruct: engine status. The body only loads the shared library and calls it."""

import os
import sys

sys.path.insert(0, os.path.join(RPR_GetResourcePath(), "Scripts", "imusic"))  # noqa: F821 (REAPER's global)
import imusic_lib  # noqa: E402

imusic_lib.run_status()
