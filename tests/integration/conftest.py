"""tests/integration: results back into the hospital (DICOM SR, FHIR, the DICOM node, Orthanc as the PACS)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # chest_dicom.py, peers.py (importlib mode)

from chest_dicom import Patient, shrink
from image_factory import real_xray


@pytest.fixture(scope="session")
def patient() -> Patient:
    return Patient()


@pytest.fixture(scope="session")
def films(fullres_images: list[Path]) -> dict[str, np.ndarray]:
    """One real NORMAL and one real PNEUMONIA radiograph (grayscale, longest side 768 px)."""
    normal = next(p for p in fullres_images if p.parent.name == "NORMAL")
    pneumonia = next(p for p in fullres_images if p.parent.name == "PNEUMONIA")
    return {"NORMAL": shrink(real_xray(normal)), "PNEUMONIA": shrink(real_xray(pneumonia))}


# The input gate (lead's work) needs its own model in the store; until one ships there, these tests run the
# service with the gate off (CXR_GATE=off) so that they test this integration rather than its absence.
GATE_SETTINGS: dict[str, str] = ({} if (Path(__file__).resolve().parents[2] / "model_store" / "gate").is_dir()
                                 else {"gate": "off"})
