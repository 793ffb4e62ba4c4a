"""Chest radiographs as a modality writes them: CR or DX (for presentation / for processing) objects made from
real X-rays, with a synthetic patient whose name, ID and birth date the tests then look for in logs and errors.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    generate_uid,
)

SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation,
               "DX-PROCESSING": DigitalXRayImageStorageForProcessing}


@dataclass(frozen=True)
class Patient:
    """Synthetic, but shaped like real identifiers so that a leak is recognisable anywhere."""

    name: str = "Zyxwvut^Qponmlk"
    patient_id: str = "PID-7730918264"
    birth_date: str = "19470219"
    sex: str = "F"

    def secrets(self) -> list[str]:
        """Every form in which the identifiers could leak (DICOM PN with ^, the parts, the ISO birth date)."""
        family, given = self.name.split("^")
        iso = f"{self.birth_date[:4]}-{self.birth_date[4:6]}-{self.birth_date[6:]}"
        return [self.name, family, given, self.patient_id, self.birth_date, iso]


def shrink(gray: np.ndarray, longest: int = 768) -> np.ndarray:
    """Keeps tests fast (and under the DICOM node's limits) while keeping the film's aspect ratio."""
    height, width = gray.shape
    scale = longest / max(height, width)
    if scale >= 1:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))


def chest_dicom(gray: np.ndarray, *, kind: str = "CR", patient: Patient | None = None,
                study_uid: str | None = None, view: str = "PA", body_part: str = "CHEST") -> bytes:
    """uint8 grayscale -> a CR or DX chest radiograph (12-bit MONOCHROME2), Explicit VR Little Endian."""
    patient = patient or Patient()
    sop_class = SOP_CLASSES[kind]
    modality = "CR" if kind == "CR" else "DX"
    stored = np.rint(gray.astype(np.float64) / 255.0 * 4095).astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = patient.name, patient.patient_id
    ds.PatientBirthDate, ds.PatientSex = patient.birth_date, patient.sex
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260115", "093000", "4711", "ACC0815"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.Manufacturer = "Test Modality"
    ds.BodyPartExamined, ds.ViewPosition = body_part, view
    ds.PatientOrientation = ["L", "F"] if view == "PA" else ["R", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PROCESSING" if kind == "DX-PROCESSING" else "FOR PRESENTATION"
        ds.ImageLaterality = "U"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
