"""Prediction + source DICOM -> a Comprehensive 3D SR (TID 1500 measurement report, built with highdicom).

This is how a PACS files an AI result (IHE AI Results): same study as the source image, a new series, the
source image referenced, a qualitative evaluation (pneumonia present/absent, SNOMED CT), the calibrated
probability as a measurement, the algorithm per TID 4019 (name, version, manufacturer; as its parameters the
operating point and decision threshold that decided and the calibration: temperature and site calibration), a
device observer, and the intended-use notice. The source's patient module is copied, because that
is what files the SR with the patient; those values never appear in a log line or an error message.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from app.dataplane import NOTICE, Prediction
from app.errors import DicomRequiredError
from model_store.imaging import sniff_format

# highdicom narrates at INFO which dataset (by SOP Instance UID) it copies the patient module from: UIDs stay
# out of our logs
logging.getLogger("highdicom").setLevel(logging.WARNING)

MEDIA_TYPE = "application/dicom"
MANUFACTURER = "cxr-serve"
SERIES_NUMBER = 9901  # high, so that viewers list the AI result after the acquired series
SERIES_DESCRIPTION = "AI pneumonia screening (preliminary; clinician review required)"

PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = hd.sr.CodedConcept(codes.SCT.Present.value, "SCT", codes.SCT.Present.meaning)
ABSENT = hd.sr.CodedConcept(codes.SCT.Absent.value, "SCT", codes.SCT.Absent.meaning)
PLAIN_CHEST_XRAY = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
PROBABILITY = hd.sr.CodedConcept(codes.DCM.Probability.value, "DCM", codes.DCM.Probability.meaning)
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
COMMENT = hd.sr.CodedConcept(codes.DCM.Comment.value, "DCM", codes.DCM.Comment.meaning)
GRAD_CAM = hd.sr.CodedConcept(codes.DCM.GradientWeightedClassActivation.value, "DCM",
                              codes.DCM.GradientWeightedClassActivation.meaning)

# Type 2 attributes highdicom reads from the source to fill the SR's patient and study modules; a source that
# lacks one (legal for some) gets it empty, as DICOM says an unknown type 2 value is written.
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                      "StudyDate", "StudyTime", "ReferringPhysicianName")
_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def read_source(data: bytes) -> Dataset:
    """The uploaded DICOM's header (no pixel data: the model already saw it); DicomRequiredError otherwise."""
    if sniff_format(data) != "DICOM":
        raise DicomRequiredError(
            f"a DICOM SR answer (Accept: {MEDIA_TYPE}) needs a DICOM upload: the SR is filed in the source "
            "image's study; send the DICOM file, or ask for application/json or application/fhir+json")
    try:
        source = dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise DicomRequiredError(f"the DICOM header cannot be read for an SR: {type(exc).__name__}") from exc
    missing = [name for name in _REQUIRED_UIDS if not str(source.get(name, "") or "").strip()]
    if missing:
        raise DicomRequiredError(f"the DICOM upload lacks {', '.join(missing)}; an SR must reference the source "
                                 "study, series and image")
    return source


def _evidence(source: Dataset) -> Dataset:
    evidence = Dataset()
    for keyword in (*_REQUIRED_UIDS, *_TYPE2_FROM_SOURCE, "SpecificCharacterSet", "IssuerOfPatientID",
                    "PatientAge", "OtherPatientIDsSequence", "StudyDescription", "Modality"):
        if keyword in source:
            evidence[keyword] = source[keyword]
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in evidence:
            setattr(evidence, keyword, "")
    return evidence


def device_uid(prediction: Prediction) -> UID:
    """Stable per model file: the same model is the same device observer in every SR it signs."""
    return generate_uid(entropy_srcs=["cxr-serve device", prediction.model.artifact.sha256])


def algorithm_parameters(prediction: Prediction) -> list[str]:
    """TID 4019 Algorithm Parameters: what turned the model's output into this finding, one 'name=value' each."""
    calibration = prediction.calibration
    site = calibration["site_calibration"]
    return [f"decision threshold={prediction.threshold:g}", f"operating point={prediction.operating_point}",
            f"temperature={calibration['temperature']:g}",
            "site calibration=" + (f"{site['method']} intercept={site['intercept']:g} slope={site['slope']:g}"
                                   if isinstance(site, dict) else "none"),
            f"model sha256={prediction.model.artifact.sha256}"]


def build_sr(prediction: Prediction, source: Dataset, *, uid_factory: Callable[[], UID] = generate_uid,
             heatmaps: Sequence[Dataset] = ()) -> hd.sr.Comprehensive3DSR:
    """``heatmaps``: DICOM images of the Grad-CAM map made for this result (app/renderers/dicom_heatmap.py);
    each is referenced from the measurement group (DCM 130403) and listed in the SR's evidence."""
    meta = prediction.model.metadata
    positive = float(prediction.probabilities[meta.positive_index])
    present = prediction.label == meta.positive_class
    evidence = _evidence(source)
    image = (str(source.SOPClassUID), str(source.SOPInstanceUID))
    algorithm = hd.sr.AlgorithmIdentification(
        name=meta.name, version=str(prediction.model.version), manufacturer=MANUFACTURER,
        parameters=algorithm_parameters(prediction))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(prediction), name=MANUFACTURER, manufacturer_name=MANUFACTURER,
            model_name=f"{meta.name} v{prediction.model.version}"))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid_factory(), identifier="pneumonia screening"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(PNEUMONIA, PRESENT if present else ABSENT)],
        measurements=[hd.sr.Measurement(
            name=PROBABILITY, value=round(positive, 6), unit=NO_UNITS, algorithm_id=algorithm,
            referenced_images=[hd.sr.SourceImageForMeasurement(*image)])],
        source_images=[hd.sr.SourceImageForMeasurementGroup(*image)])
    # the intended-use notice, and any warning (e.g. the input gate's flag), travel with the result as comments
    for text in (NOTICE, *getattr(prediction, "warnings", ())):
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    for heatmap in heatmaps:
        group[0].ContentSequence.append(hd.sr.ImageContentItem(
            name=GRAD_CAM, referenced_sop_class_uid=heatmap.SOPClassUID,
            referenced_sop_instance_uid=heatmap.SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_CHEST_XRAY, imaging_measurements=[group])
    return hd.sr.Comprehensive3DSR(
        evidence=[evidence, *map(_evidence, heatmaps)], content=report[0], series_instance_uid=uid_factory(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=uid_factory(), instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=meta.name, software_versions=str(prediction.model.version),
        transfer_syntax_uid=ExplicitVRLittleEndian)


def encode(sr: Dataset) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def render(prediction: Prediction, data: bytes) -> bytes:
    """The SR as a DICOM Part 10 file (what ``Accept: application/dicom`` answers)."""
    return encode(build_sr(prediction, read_source(data)))
