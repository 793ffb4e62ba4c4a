"""Score a local sample through exactly what the service does: the same settings (``CXR_*``), the same model
build and runtime choice (app.model_manager), the same decode -> shape check -> input gate -> preprocessing
(app.dataplane), then the artifact's calibration as served (model_store.site_calibration).

Only the batching differs: films go to the runtime in its largest batches (what the service's batcher does under
load), so a few hundred films take seconds. Files the service would refuse (unreadable, not an image, refused by
the gate) are listed with the service's own error code and message, never scored, and never stop the run.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.site.sample import Item

log = logging.getLogger("cxr.site")
CHUNK = 64  # films prepared in the decode threads per round (memory stays small for any sample size)


@dataclass
class Refusal:
    path: str
    label: int
    code: str
    message: str


@dataclass
class ScoredSample:
    """The scored films, in sample order; ``raw`` is the runtime's output, ``served`` P(positive) as the
    service answers it with the version scored."""

    paths: list[str]
    labels: np.ndarray
    raw: np.ndarray | None  # (n, classes) model output before any calibration (None: from the audit store)
    served: np.ndarray  # (n,) P(positive) after the artifact's temperature and site calibration
    hashes: list[str]  # sha256 of each scored file
    refused: list[Refusal] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)  # name, version, sha256, runtime
    settings: dict[str, Any] = field(default_factory=dict)  # gate mode and runtime requested


def progress(items: list[Item], enabled: bool | None = None) -> Iterable[Item]:
    """A progress bar on a terminal (tqdm when installed, else one line redrawn), nothing otherwise."""
    enabled = sys.stderr.isatty() if enabled is None else enabled
    if not enabled:
        return items
    try:
        from tqdm import tqdm

        return tqdm(items, unit="film", desc="scoring", file=sys.stderr)
    except ImportError:
        return _simple_bar(items)


def _simple_bar(items: list[Item]) -> Iterator[Item]:
    total = len(items)
    for done, item in enumerate(items, start=1):
        yield item
        filled = int(30 * done / max(total, 1))
        sys.stderr.write(f"\rscoring [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class Scorer:
    """The service's model, gate and preprocessing, loaded once; ``score`` runs a sample through them."""

    def __init__(self, version: int | str | None = None, store: str | Path | None = None,
                 **overrides: object) -> None:
        from app.dataplane import DataPlane
        from app.metrics import Metrics
        from app.model_manager import ModelManager
        from app.settings import Settings

        if store is not None:
            overrides["model_store"] = Path(store)
        if version is not None:
            overrides["model_version"] = str(version)
        self.settings = Settings.load(**overrides)
        self.manager = ModelManager(self.settings, Metrics())
        self.manager.load_initial()  # device, gate, then build: runtime chosen and verified as at start-up
        self.model = self.manager.current
        self.model.batcher.stop()  # the site tools call the runtime directly, in large batches
        self.dataplane = DataPlane(self.settings, self.manager, self.manager.metrics)

    @property
    def metadata(self) -> Any:
        return self.model.metadata

    def close(self) -> None:
        self.dataplane.close()

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    def _prepare(self, item: Item) -> tuple[np.ndarray, str] | Refusal:
        from app.errors import classify

        try:
            data = item.path.read_bytes()
        except OSError as exc:
            return Refusal(str(item.path), item.label, "unreadable_file", f"cannot read the file: {exc.strerror}")
        try:
            # the service's own decode -> shape check -> gate -> preprocess (private: called, not copied, so a
            # change there changes what the report measures too)
            prepared = self.dataplane._prepare(data, self.model)
        except Exception as exc:
            _status, code, message = classify(exc)
            if code == "internal_error":
                message = f"{type(exc).__name__}: {exc}"
            return Refusal(str(item.path), item.label, code, message)
        return prepared.x, hashlib.sha256(data).hexdigest()

    def score(self, items: list[Item], show_progress: bool | None = None,
              on_film: Callable[[Item], None] | None = None) -> ScoredSample:
        from model_store.site_calibration import final_probabilities

        runtime = self.model.runtime.runtime if self.model.runtime is not None else None
        if runtime is None:
            raise RuntimeError("the serving model has no runtime")
        paths, labels, hashes, raw, refused = [], [], [], [], []
        pending: list[tuple[Item, np.ndarray, str]] = []

        def flush() -> None:
            if pending:
                raw.append(np.asarray(runtime.predict_any(np.stack([x for _, x, _ in pending])), np.float32))
                for item, _, digest in pending:
                    paths.append(str(item.path))
                    labels.append(item.label)
                    hashes.append(digest)
                pending.clear()

        bar = progress(items, show_progress)
        iterator = iter(bar)
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            for item, outcome in zip(chunk, self.dataplane.pool.map(self._prepare, chunk), strict=True):
                next(iterator, None)
                if isinstance(outcome, Refusal):
                    refused.append(outcome)
                else:
                    pending.append((item, *outcome))
                if on_film is not None:
                    on_film(item)
            flush()
        next(iterator, None)  # lets a generator bar finish its line
        meta = self.metadata
        output = np.concatenate(raw) if raw else np.zeros((0, len(meta.class_names)), np.float32)
        served = final_probabilities(output, meta)[:, meta.positive_index] if len(output) else np.zeros(0)
        return ScoredSample(paths=paths, labels=np.asarray(labels, dtype=np.int64), raw=output,
                            served=np.asarray(served, dtype=np.float64), hashes=hashes, refused=refused,
                            model=self.describe(),
                            settings={"gate": self.settings.gate, "runtime": self.model.runtime_name})
