"""tests/integration fixtures: results back into the hospital (DICOM SR, FHIR, the DICOM node, Orthanc as the
PACS). Helpers live in integration_support.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # integration_support, chest_dicom, peers (importlib mode)

from chest_dicom import Patient


@pytest.fixture(scope="session")
def patient() -> Patient:
    return Patient()
