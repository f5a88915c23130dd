"""Fitted models that turn scores into probabilities, stored per embedding model as a small JSON file.

A calibration holds two logistic regressions over named features: `answerability` (do the retrieved
chunks hold the answer to the question?) and `reader` (does this sentence hold it?). Both are fitted by
`kbqa eval calibrate` on labelled questions; the bundled embedding model's calibration ships with kbqa
(`retrieval/calibrations/`), and a user's own fits are kept under `<data_dir>/calibrations/`, where they
take precedence. Logistic regression is small enough to read: each weight says how much its feature
(standardised) moves the log-odds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.atomic import atomic_write_text

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "calibrations"
CALIBRATION_FOLDER = "calibrations"  # under the data directory


@dataclass(frozen=True)
class LogisticModel:
    """A logistic regression over named features, standardised with the mean and scale of its fitting data."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float

    @classmethod
    def fit(
        cls, features: Sequence[str], x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50
    ) -> LogisticModel:
        """Return the L2-regularised maximum-likelihood fit of labels `y` (0/1) on rows `x` (Newton's method)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(features) or len(x) != len(y) or len(set(y.tolist())) < 2:
            raise ValueError("fitting needs rows of every feature and both labels among them")
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-9] = 1.0
        design = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
        theta = np.zeros(design.shape[1])
        penalty = np.full(design.shape[1], l2)
        penalty[-1] = 0.0  # the bias is not shrunk
        for _ in range(iterations):
            p = _sigmoid(design @ theta)
            gradient = design.T @ (p - y) + penalty * theta
            hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
            step = np.linalg.solve(hessian, gradient)
            theta -= step
            if np.abs(step).max() < 1e-8:
                break
        return cls(
            tuple(features),
            tuple(mean.tolist()),
            tuple(scale.tolist()),
            tuple(theta[:-1].tolist()),
            theta[-1],
        )

    @classmethod
    def fit_ranking(
        cls,
        features: Sequence[str],
        groups: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        l2: float = 1.0,
        iterations: int = 50,
    ) -> LogisticModel:
        """Return a model that ranks each group's positive rows first, its scores calibrated to probabilities.

        The weights maximise each group's softmax likelihood of its positive rows (spread evenly among
        them; a listwise fit, Newton's method with a halving line search): they learn which row of a
        group holds the answer rather than whether a row does in general, so features that are constant
        within a group cost nothing. The score is then mapped to a probability by a one-feature logistic
        fit over all rows, so thresholds on probabilities keep their meaning.
        """
        xs = [np.asarray(x, dtype=np.float64) for x in groups]
        ys = [np.asarray(y, dtype=np.float64) for y in labels]
        if not xs or len(xs) != len(ys):
            raise ValueError("fitting needs one label array per group")
        if any(
            x.ndim != 2 or x.shape[1] != len(features) or len(x) != len(y)
            for x, y in zip(xs, ys, strict=True)
        ):
            raise ValueError("fitting needs rows of every feature and one label per row")
        rows, y = np.vstack(xs), np.concatenate(ys)
        if len(set(y.tolist())) < 2:
            raise ValueError("fitting needs both labels among the rows")
        mean = rows.mean(axis=0)
        scale = rows.std(axis=0)
        scale[scale < 1e-9] = 1.0
        # Only groups with both labels tell which row ranks first.
        ranked = [
            ((x - mean) / scale, t / t.sum()) for x, t in zip(xs, ys, strict=True) if 0 < t.sum() < len(t)
        ]

        def loss(w: np.ndarray) -> float:
            total = 0.5 * l2 * w @ w
            for z, target in ranked:
                s = z @ w
                top = s.max()
                total += np.log(np.exp(s - top).sum()) + top - target @ s
            return float(total)

        w = np.zeros(len(features))
        current = loss(w)
        for _ in range(iterations):
            gradient, hessian = l2 * w, l2 * np.eye(len(w))
            for z, target in ranked:
                s = z @ w
                p = np.exp(s - s.max())
                p /= p.sum()
                mean_row = p @ z
                gradient = gradient + z.T @ (p - target)
                hessian = hessian + (z * p[:, None]).T @ z - np.outer(mean_row, mean_row)
            step = np.linalg.solve(hessian, gradient)
            shrink = 1.0  # a full Newton step overshoots along the features that barely vary within a group
            while (candidate := loss(w - shrink * step)) > current and shrink > 1e-6:
                shrink /= 2
            if candidate > current:
                break
            w -= shrink * step
            converged = current - candidate < 1e-9 * max(1.0, abs(current))
            current = candidate
            if converged:
                break
        score = ((rows - mean) / scale) @ w
        link = cls.fit(("score",), score[:, None], y, l2=0.0)
        slope = link.weights[0] / link.scale[0]
        bias = link.bias - slope * link.mean[0]
        return cls(
            tuple(features), tuple(mean.tolist()), tuple(scale.tolist()), tuple((slope * w).tolist()), bias
        )

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Return the probability of the positive label for each row of feature values."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        z = ((x - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.weights) + self.bias
        return _sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        """Return the model as plain JSON values."""
        return {
            "features": list(self.features),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "weights": list(self.weights),
            "bias": self.bias,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogisticModel:
        """Return the model stored by `to_dict`."""
        model = cls(
            tuple(data["features"]),
            tuple(map(float, data["mean"])),
            tuple(map(float, data["scale"])),
            tuple(map(float, data["weights"])),
            float(data["bias"]),
        )
        if not len(model.features) == len(model.mean) == len(model.scale) == len(model.weights):
            raise ValueError("a logistic model needs one mean, scale and weight per feature")
        return model


@dataclass(frozen=True)
class Calibration:
    """The fitted models of one embedding model (and reranker, when one was used to fit them)."""

    embedding_model: str
    answerability: LogisticModel
    reader: LogisticModel | None = None
    reranker: str | None = None
    report: dict[str, Any] = field(default_factory=dict)  # how and on what it was fitted, and how well

    @property
    def key(self) -> str:
        """Return the file name stem this calibration is stored under."""
        return calibration_key(self.embedding_model, self.reranker)

    def save(self, folder: Path) -> Path:
        """Write the calibration as `<folder>/<key>.json` atomically; return the path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.key}.json"
        body = {
            "embedding_model": self.embedding_model,
            "reranker": self.reranker,
            "answerability": self.answerability.to_dict(),
            "reader": self.reader.to_dict() if self.reader else None,
            "report": self.report,
        }
        atomic_write_text(path, json.dumps(body, ensure_ascii=False, indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Calibration:
        """Return the calibration stored in a file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            embedding_model=data["embedding_model"],
            answerability=LogisticModel.from_dict(data["answerability"]),
            reader=LogisticModel.from_dict(data["reader"]) if data.get("reader") else None,
            reranker=data.get("reranker"),
            report=data.get("report") or {},
        )


def calibration_key(embedding_model: str, reranker: str | None = None) -> str:
    """Return the file name stem of a model pair's calibration (model names without owner or folder)."""
    names = [Path(embedding_model.rstrip("/\\")).name]
    if reranker:
        names.append(Path(reranker.rstrip("/\\")).name)
    return "+".join(names)


def find_calibration(data_dir: Path, embedding_model: str, reranker: str | None = None) -> Calibration | None:
    """Return the calibration of an embedding model (with this reranker when one is given), or None.

    The data directory's own fits come first, then the calibrations bundled with kbqa.
    """
    key = calibration_key(embedding_model, reranker)
    for folder in (Path(data_dir) / CALIBRATION_FOLDER, BUNDLED_DIR):
        path = folder / f"{key}.json"
        if path.is_file():
            try:
                return Calibration.read(path)
            except (OSError, ValueError, KeyError, TypeError) as error:
                log.warning("unreadable calibration ignored", extra={"path": str(path), "error": str(error)})
    return None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))
