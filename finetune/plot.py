"""The loss curve of a training run as a PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

WIDTH, HEIGHT, MARGIN = 800, 480, 64
TRAIN, SMOOTH, EVAL, AXES = (160, 190, 230), (31, 90, 180), (220, 80, 40), (60, 60, 60)


def plot_loss(log_history: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Return `path` holding the training (and eval) loss by step, or None when nothing was logged."""
    from PIL import Image, ImageDraw, ImageFont

    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    points = [p for p in train + evals if math.isfinite(p[1])]
    if not points:
        return None
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    low, high = (low - 0.5, high + 0.5) if high - low < 1e-9 else (low, high)
    last_step = max(max(p[0] for p in points), 1)

    def xy(step: float, loss: float) -> tuple[float, float]:
        x = MARGIN + (WIDTH - 2 * MARGIN) * step / last_step
        return x, HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (loss - low) / (high - low)

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (WIDTH - MARGIN, HEIGHT - MARGIN)], AXES, 2)
    for fraction in (0.0, 0.5, 1.0):
        loss, step = low + (high - low) * fraction, round(last_step * fraction)
        draw.text((MARGIN - 8, xy(0, loss)[1]), f"{loss:.3g}", AXES, font, anchor="rm")
        draw.text((xy(step, low)[0], HEIGHT - MARGIN + 8), str(step), AXES, font, anchor="mt")
    draw.text((WIDTH / 2, MARGIN / 2), title, AXES, font, anchor="mm")
    draw.text((WIDTH / 2, HEIGHT - MARGIN / 3), "step", AXES, font, anchor="mm")
    if len(train) > 1:
        draw.line([xy(*p) for p in train], TRAIN, 1)
        draw.line([xy(*p) for p in _smoothed(train)], SMOOTH, 2)
    elif train:
        draw.ellipse(_dot(xy(*train[0])), SMOOTH)
    for step, loss in evals:
        draw.ellipse(_dot(xy(step, loss)), EVAL)
    legend = [("train loss", SMOOTH)] + ([("eval loss", EVAL)] if evals else [])
    for row, (label, colour) in enumerate(legend):
        y = MARGIN + 8 + 20 * row
        draw.ellipse(_dot((WIDTH - MARGIN - 110, y)), colour)
        draw.text((WIDTH - MARGIN - 100, y), label, AXES, font, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _smoothed(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """Return an exponential moving average, heavier for longer runs (as LLaMA-Factory's plot)."""
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(points))) - 0.5)
    average, smoothed = points[0][1], []
    for step, loss in points:
        average = weight * average + (1 - weight) * loss
        smoothed.append((step, average))
    return smoothed


def _dot(centre: tuple[float, float], radius: float = 4) -> tuple[float, float, float, float]:
    return centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius
