"""What measures the models: `imusic eval` (evaluate.py), the metrics (metrics.py), the pictures (plots.py) and what a
codec can carry before any model is trained on it (codec_report.py)."""
