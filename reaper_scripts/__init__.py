"""REAPER actions. The planning functions are plain Python, importable and testable without REAPER."""
