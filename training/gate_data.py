"""Data for the input gate: frontal chest radiographs (accept) against everything else (refuse).

Every image carries a *source* (the collection it came from) and a *kind*, so validation can hold whole
sources out: the gate is judged on collections it never saw, as it will be in use. Negatives we generate
(blank pages, noise, gradients, text, corner crops and inverted radiographs) are their own sources.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from model_store.imaging import DecodeError, load_file
from model_store.preprocessing import PreprocessingSpec, preprocess

log = logging.getLogger(__name__)

ACCEPT, REFUSE = 1, 0
GATE_CLASSES = ["other", "chest_radiograph"]  # output order; the score is P(chest_radiograph)

# File-name prefix -> source collection (shared/data/gate/README.md lists them). Two prefixes that came from
# one repository share a source, so holding a source out really removes everything it contributed.
SOURCE_OF_PREFIX = {
    "cadma": "cadma", "ddh": "radoss", "hip_us": "radoss", "jw_knee": "jw", "jw_shoulder": "jw", "jw_optos": "jw",
    "headct": "headct", "brainmri": "brainmri", "msk_us": "unet_us", "ddsm": "ddsm", "chase": "mipple",
    "drive": "mipple", "mlua": "mlua", "bccd": "bccd", "isbi_em": "isbi_em", "kather": "kather",
    "kvasirseg": "kvasir", "set5": "kair", "set12": "kair", "kodak": "kodak", "easyocr": "easyocr",
    "ocrmypdf": "ocrmypdf", "layoutparser": "layoutparser",
    # hands, limbs and lateral chest films (sources 23-27). Both RSNA Bone Age copies are one collection, as
    # the two NIH copies are: holding one out while training on the other would leak the same hands
    "rsnahand": "rsna_boneage", "rsnareg": "rsna_boneage", "sr22": "sr22", "medpix": "medpix",
    "chexpert": "chexpert",
    # adult frontal chest radiographs
    "openist": "openist", "figure1": "figure1", "nih64": "nih", "nih": "nih",
}
SYNTHETIC_KINDS = ("blank", "noise", "gradient", "text", "corner_crop", "inverted_cxr")


@dataclass
class GateSet:
    """Preprocessed gate inputs (N, S, S, 1) float32 with label, kind and source per image."""

    x: np.ndarray
    y: np.ndarray
    kinds: np.ndarray
    sources: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> GateSet:
        return GateSet(self.x[index], self.y[index], self.kinds[index], self.sources[index])

    @staticmethod
    def concat(sets: list[GateSet]) -> GateSet:
        return GateSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in ("x", "y", "kinds", "sources")))


def source_of(name: str) -> str:
    """The source collection of a gate image from its file name (longest known prefix wins)."""
    for prefix in sorted(SOURCE_OF_PREFIX, key=len, reverse=True):
        if name.startswith(prefix + "_"):
            return SOURCE_OF_PREFIX[prefix]
    return "unknown:" + name.split("_", 1)[0]


def _images(paths: list[Path], spec: PreprocessingSpec) -> tuple[np.ndarray, list[Path]]:
    out, kept = [], []
    for path in paths:
        try:
            out.append(preprocess(load_file(path), spec))
            kept.append(path)
        except (DecodeError, ValueError) as exc:
            log.warning("skipping %s: %s", path.name, exc)
    return np.stack(out).astype(np.float32), kept


def _sorted_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpeg", ".jpg"})


def load_gate_folder(gate_root: str | os.PathLike[str], spec: PreprocessingSpec) -> GateSet:
    """``gate/not_cxr/<kind>/*.png`` (refuse) and ``gate/adult_cxr/*.png`` (accept)."""
    root = Path(gate_root)
    sets = []
    for kind_dir in sorted(p for p in (root / "not_cxr").iterdir() if p.is_dir()):
        x, kept = _images(_sorted_images(kind_dir), spec)
        sets.append(GateSet(x, np.full(len(kept), REFUSE), np.array([kind_dir.name] * len(kept)),
                            np.array([source_of(p.name) for p in kept])))
    x, kept = _images(_sorted_images(root / "adult_cxr"), spec)
    sets.append(GateSet(x, np.full(len(kept), ACCEPT), np.array(["adult_cxr"] * len(kept)),
                        np.array([source_of(p.name) for p in kept])))
    return GateSet.concat(sets)


def load_kermany_positives(train_root: str | os.PathLike[str], spec: PreprocessingSpec, limit: int | None,
                           seed: int) -> tuple[GateSet, np.ndarray]:
    """Pediatric frontal films (accept) from the Kermany ``train/`` folder; returns them and their grey
    originals at the gate size (used to make corner crops and inverted negatives)."""
    paths = sorted(p for cls in ("NORMAL", "PNEUMONIA") for p in _sorted_images(Path(train_root) / cls))
    if limit and limit < len(paths):
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in np.sort(rng.choice(len(paths), limit, replace=False))]
    x, kept = _images(paths, spec)
    n = len(kept)
    return GateSet(x, np.full(n, ACCEPT), np.array(["pediatric_cxr"] * n), np.array(["kermany"] * n)), x


def synthetic_negatives(count_per_kind: int, radiographs: np.ndarray, size: int, seed: int) -> GateSet:
    """Things a careless or hostile client sends that are no radiograph: blank pages, noise, gradients, text,
    a corner of a radiograph blown up, and a radiograph with its grey scale inverted."""
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    kinds: list[str] = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    for kind in SYNTHETIC_KINDS:
        for _ in range(count_per_kind):
            if kind == "blank":
                img = np.full((size, size), rng.choice([0.0, 1.0, rng.uniform()]), np.float32)
                img += rng.normal(0, rng.uniform(0, 0.02), img.shape).astype(np.float32)
            elif kind == "noise":
                img = (rng.uniform(size=(size, size)) if rng.uniform() < 0.5
                       else rng.normal(rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.3), (size, size)))
            elif kind == "gradient":
                angle = rng.uniform(0, 2 * np.pi)
                img = np.cos(angle) * xx + np.sin(angle) * yy
                if rng.uniform() < 0.4:  # radial
                    cy, cx = rng.uniform(0.2, 0.8, 2)
                    img = np.hypot(xx - cx, yy - cy)
                img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
            elif kind == "text":
                img = _text_page(rng, size)
            elif kind == "corner_crop":
                source = radiographs[rng.integers(len(radiographs)), ..., 0]
                side = int(size * rng.uniform(0.2, 0.35))
                top = 0 if rng.uniform() < 0.5 else size - side
                left = 0 if rng.uniform() < 0.5 else size - side
                crop = source[top:top + side, left:left + side]
                img = np.asarray(Image.fromarray(crop, mode="F").resize((size, size), Image.Resampling.BILINEAR))
            else:  # inverted_cxr
                img = 1.0 - radiographs[rng.integers(len(radiographs)), ..., 0]
            images.append(np.clip(img, 0, 1).astype(np.float32))
            kinds.append(kind)
    x = np.stack(images)[..., None]
    n = len(kinds)
    return GateSet(x, np.full(n, REFUSE), np.array(kinds), np.array([f"synthetic_{k}" for k in kinds]))


def _text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    big = size * 4
    paper, ink = (255, 0) if rng.uniform() < 0.7 else (0, 255)
    page = Image.new("L", (big, big), paper)
    draw = ImageDraw.Draw(page)
    words = ["PATIENT", "REPORT", "chest", "x-ray", "normal", "lorem", "ipsum", "2026", "REF", "table", "form"]
    y = int(rng.integers(2, 20))
    while y < big - 10:
        line = " ".join(rng.choice(words, int(rng.integers(2, 8))))
        draw.text((int(rng.integers(2, 30)), y), line, fill=ink)
        y += int(rng.integers(10, 24))
    return np.asarray(page.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
