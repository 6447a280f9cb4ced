"""PNG figures for training and evaluation: loss curves, before/after mel spectrograms (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.files import atomic_path


def _pyplot():
    # Agg: no display needed (servers, CI); selected before pyplot is first imported.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_atomically(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    return path


def plot_curves(
    train: Sequence[tuple[int, float]],
    path: str | Path,
    val: Sequence[tuple[int, float]] = (),
    lr: Sequence[tuple[int, float]] = (),
    title: str = "training",
) -> Path:
    """Write a PNG of the training loss (and validation loss, learning rate when given) against the step."""
    plt = _pyplot()
    fig, loss_axis = plt.subplots(figsize=(8, 4.5))
    if train:
        steps, losses = zip(*train, strict=True)
        loss_axis.plot(steps, losses, label="train loss", color="tab:blue", linewidth=1)
    if val:
        steps, losses = zip(*val, strict=True)
        loss_axis.plot(steps, losses, "o-", label="validation loss", color="tab:orange")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("cross-entropy")
    loss_axis.set_title(title)
    loss_axis.grid(alpha=0.3)
    handles, labels = loss_axis.get_legend_handles_labels()
    if lr:
        lr_axis = loss_axis.twinx()
        steps, rates = zip(*lr, strict=True)
        lr_axis.plot(steps, rates, color="tab:gray", linewidth=0.8, alpha=0.6, label="learning rate")
        lr_axis.set_ylabel("learning rate")
        more_handles, more_labels = lr_axis.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        loss_axis.legend(handles, labels, loc="upper right")
    fig.tight_layout()
    try:
        return _save_atomically(fig, Path(path))
    finally:
        plt.close(fig)


def plot_spectrograms(
    clips: Sequence[tuple[str, np.ndarray]],
    sample_rate: int,
    path: str | Path,
    title: str = "",
) -> Path:
    """Write a PNG with one 16 kHz log-mel spectrogram per (label, audio) pair, stacked (e.g. input, output, target)."""
    from engine.eval.metrics import EVAL_RATE, MEL_HOP, mel_spectrogram, to_db

    plt = _pyplot()
    mels_db = [to_db(mel_spectrogram(audio, sample_rate)) for _, audio in clips]
    # One colour scale for all panels, so that a louder or quieter result reads as such.
    top = max(float(m.max()) for m in mels_db)
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 2.2 * len(clips)), sharex=True, squeeze=False)
    for axis, (label, _), mel_db in zip(axes[:, 0], clips, mels_db, strict=True):
        seconds = mel_db.shape[1] * MEL_HOP / EVAL_RATE
        image = axis.imshow(
            mel_db, origin="lower", aspect="auto", extent=(0, seconds, 0, mel_db.shape[0]), vmin=top - 80, vmax=top
        )
        axis.set_ylabel(f"{label}\nmel band")
    axes[-1, 0].set_xlabel("seconds")
    if title:
        axes[0, 0].set_title(title)
    fig.colorbar(image, ax=axes[:, 0].tolist(), label="dB")
    try:
        return _save_atomically(fig, Path(path))
    finally:
        plt.close(fig)


def stereo_label(audio: np.ndarray) -> str:
    """How wide a clip is, for a panel's corner: side-to-mid level in dB, or "dual mono" / "mono"."""
    audio = np.atleast_2d(audio)
    if audio.shape[0] < 2:
        return "mono"
    mid = float(np.mean((audio[0] + audio[1]) ** 2))
    side = float(np.mean((audio[0] - audio[1]) ** 2))
    if side <= 1e-12 * max(mid, 1e-12):
        return "dual mono (no stereo image)"
    return f"side/mid {10.0 * np.log10(side / max(mid, 1e-20)):+.1f} dB"


def plot_spectrogram_grid(
    rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray | None]]]],
    sample_rate: int,
    path: str | Path,
    title: str = "",
) -> Path:
    """A PNG grid of 16 kHz log-mel spectrograms: one row per (label, cells), one column per cell (label, audio or
    None for "not available"); every panel says how wide its stereo image is. One colour scale for all panels."""
    from engine.eval.metrics import EVAL_RATE, MEL_HOP, mel_spectrogram, to_db

    plt = _pyplot()
    columns = max(len(cells) for _, cells in rows)
    mels = {
        (r, c): to_db(mel_spectrogram(audio, sample_rate))
        for r, (_, cells) in enumerate(rows)
        for c, (_, audio) in enumerate(cells)
        if audio is not None
    }
    top = max(float(m.max()) for m in mels.values())
    fig, axes = plt.subplots(len(rows), columns, figsize=(4.2 * columns + 1, 2.2 * len(rows)), squeeze=False)
    image = None
    for r, (row_label, cells) in enumerate(rows):
        for c in range(columns):
            axis = axes[r, c]
            if c >= len(cells):
                axis.axis("off")
                continue
            label, audio = cells[c]
            axis.set_title(label, fontsize=9)
            if audio is None:
                axis.text(0.5, 0.5, "not available", ha="center", va="center", transform=axis.transAxes)
                axis.set_xticks([])
                axis.set_yticks([])
                continue
            mel_db = mels[(r, c)]
            seconds = mel_db.shape[1] * MEL_HOP / EVAL_RATE
            extent = (0, seconds, 0, mel_db.shape[0])
            image = axis.imshow(mel_db, origin="lower", aspect="auto", extent=extent, vmin=top - 80, vmax=top)
            axis.text(0.01, 0.97, stereo_label(audio), transform=axis.transAxes, va="top", fontsize=7, color="white")
            if c == 0:
                axis.set_ylabel(f"{row_label}\nmel band")
            if r == len(rows) - 1:
                axis.set_xlabel("seconds")
            else:
                axis.tick_params(labelbottom=False)  # one time axis at the bottom: titles above stay readable
    if title:
        fig.suptitle(title)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="dB")
    try:
        return _save_atomically(fig, Path(path))
    finally:
        plt.close(fig)


def plot_val_curves(
    runs: dict[str, Sequence[tuple[int, float]]], path: str | Path, title: str = "validation loss"
) -> Path:
    """One PNG comparing runs: each run's validation loss against the step, labelled by its key."""
    if not runs or not all(runs.values()):
        raise ValueError("plot_val_curves needs at least one run, each with at least one (step, loss) point")
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(8, 4.5))
    for label, points in runs.items():
        steps, losses = zip(*points, strict=True)
        axis.plot(steps, losses, marker="o", markersize=3, label=label)
    axis.set_xlabel("step")
    axis.set_ylabel("validation loss (nats / token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    out = _save_atomically(fig, path)
    plt.close(fig)
    return out
