"""REAPER actions. The planning functions are plain Python, importable and testable without REAPER.

planning.py: the decisions (which file region, where the result goes, its name); imusic_lib.py: the one library the
actions share (reads REAPER, talks to the engine, deferred polling, inserts results); imusic_*.py: one action per
file; installer.py: `imusic reaper install|uninstall`; keymap.py: the reaper-kb.ini lines and default shortcuts
(bound only where free); factory_keys.py: REAPER's own shortcuts. docs/REAPER.md describes them for users.
"""
