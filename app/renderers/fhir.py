"""Prediction -> a FHIR R5 DiagnosticReport (built and validated with fhir.resources).

One resource answers the request: the DiagnosticReport (status ``preliminary``: a clinician must review it)
with the Observation (pneumonia present/absent, the calibrated probability, the decision threshold, the operating
point that decided and the calibration) and the
Device (the model: name, version, sha256) as contained resources, and, for a DICOM upload, a logical reference
to the ImagingStudy by its Study Instance UID (how an EHR links the result to the images in the PACS).
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from fhir.resources.diagnosticreport import DiagnosticReport
from pydicom import dcmread
from pydicom.dataset import Dataset

from app.dataplane import NOTICE, Prediction
from model_store.imaging import sniff_format

MEDIA_TYPE = "application/fhir+json"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID = "urn:dicom:uid"  # the identifier system FHIR's ImagingStudy uses for Study Instance UIDs

PNEUMONIA = {"system": SNOMED, "code": "233604007", "display": "Pneumonia"}
PRESENT = {"system": SNOMED, "code": "52101004", "display": "Present"}
ABSENT = {"system": SNOMED, "code": "272519000", "display": "Absent"}


def study_uid_of(data: bytes) -> str | None:
    """The Study Instance UID of a DICOM upload (header only), or None for other formats."""
    if sniff_format(data) != "DICOM":
        return None
    try:
        header: Dataset = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                                  specific_tags=["StudyInstanceUID"])
    except Exception:  # the data plane decoded this file; a header that still fails just omits the link
        return None
    uid = str(header.get("StudyInstanceUID", "") or "").strip()
    return uid or None


def _quantity(value: float) -> dict[str, Any]:
    return {"value": round(value, 6), "unit": "1", "system": UCUM, "code": "1"}


def calibration_text(calibration: dict[str, Any]) -> str:
    """The calibration as one readable line (FHIR components carry one value each)."""
    site = calibration["site_calibration"]
    site_text = (f"site calibration {site['method']} (intercept {site['intercept']:g}, slope {site['slope']:g})"
                 if isinstance(site, dict) else "no site calibration")
    return f"temperature {calibration['temperature']:g}; {site_text}"


def build_report(prediction: Prediction, request_id: str, study_uid: str | None) -> DiagnosticReport:
    meta = prediction.model.metadata
    positive = float(prediction.probabilities[meta.positive_index])
    present = prediction.label == meta.positive_class
    version = str(prediction.model.version)
    sha256 = prediction.model.artifact.sha256
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    finding = "present" if present else "absent"
    study = ([{"type": "ImagingStudy", "identifier": {"system": DICOM_UID, "value": f"urn:oid:{study_uid}"}}]
             if study_uid else [])
    device = {
        "resourceType": "Device", "id": "model", "status": "active", "manufacturer": "cxr-serve",
        "name": [{"value": meta.name, "type": "user-friendly-name"}],
        "version": [{"type": {"text": "model version"}, "value": version},
                    {"type": {"text": "model file sha256"}, "value": sha256}],
        "note": [{"text": NOTICE}],
    }
    observation = {
        "resourceType": "Observation", "id": "finding", "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "imaging", "display": "Imaging"}]}],
        "code": {"coding": [PNEUMONIA], "text": "Pneumonia (AI screening)"},
        "valueCodeableConcept": {"coding": [PRESENT if present else ABSENT], "text": finding},
        "component": [
            {"code": {"text": "Probability of pneumonia (calibrated)"}, "valueQuantity": _quantity(positive)},
            {"code": {"text": "Decision threshold"}, "valueQuantity": _quantity(prediction.threshold)},
            {"code": {"text": "Operating point"}, "valueString": prediction.operating_point},
            {"code": {"text": "Calibration"}, "valueString": calibration_text(prediction.calibration)},
        ],
        "device": {"reference": "#model"},
        "issued": issued,
        "note": [{"text": text} for text in (NOTICE, *getattr(prediction, "warnings", ()))],
        **({"derivedFrom": study} if study else {}),
    }
    report = {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "identifier": [{"type": {"text": "cxr-serve request id"}, "value": request_id}] if request_id else [],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
                 "text": "Pneumonia screening of a chest radiograph (AI, preliminary)"},
        "issued": issued,
        "contained": [device, observation],
        "result": [{"reference": "#finding"}],
        "conclusion": f"Pneumonia {finding} (probability {positive:.3f}, decision threshold "
                      f"{prediction.threshold:.3f} at operating point {prediction.operating_point}; model "
                      f"{meta.name} v{version}). {NOTICE}",
        # a coded conclusion only for the finding itself; "absent" is carried by the Observation's value
        **({"conclusionCode": [{"coding": [PNEUMONIA], "text": "pneumonia present"}]} if present else {}),
        **({"study": study} if study else {}),
    }
    return DiagnosticReport.model_validate(report)


def render(prediction: Prediction, data: bytes, request_id: str) -> bytes:
    """The DiagnosticReport as FHIR JSON (what ``Accept: application/fhir+json`` answers)."""
    report = build_report(prediction, request_id, study_uid_of(data))
    return report.model_dump_json(by_alias=True, exclude_none=True).encode()
