"""Prediction (with its Grad-CAM map) + source DICOM -> a Secondary Capture any viewer can show (IHE AIR).

The film, at its own rows and columns, in RGB, with the heatmap blended over it (the review page's colours:
jet ramp, opacity rising with the value) and a burned-in caption that states what it is, the probability, and
that it is not a diagnosis. Same study as the film, its own series (numbered after the SR's), the film
referenced as its source, BurnedInAnnotation YES. The patient module is copied from the film (that is what files
it with the patient); those values never appear in a log line or an error message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from app.dataplane import Prediction
from app.explain import colorize, place_on_image
from app.renderers.dicom_sr import MANUFACTURER
from model_store.imaging import decode
from model_store.preprocessing import to_unit_float

SERIES_NUMBER = 9902  # after the SR's 9901: viewers list the AI objects after the acquired series
SERIES_DESCRIPTION = "AI heatmap (Grad-CAM; not for diagnosis)"
DERIVATION = "Grad-CAM heatmap of the pneumonia score blended over the source radiograph"
# what a PA/AP chest film shows when nothing says otherwise: patient's left to the right, feet down
DEFAULT_ORIENTATION = ("L", "F")


class HeatmapUnavailableError(ValueError):
    """The prediction carries no Grad-CAM map (it was made without explain=true)."""


def caption(prediction: Prediction) -> str:
    meta = prediction.model.metadata
    positive = float(prediction.probabilities[meta.positive_index])
    return f"AI heatmap - {meta.positive_class.lower()} P={positive:.2f} - not for diagnosis"


@functools.lru_cache(maxsize=16)  # one size per film height class; loading a font costs ~1 ms
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def burn_caption(pixels: np.ndarray, text: str) -> np.ndarray:
    """White text on a black band along the top edge, sized to the film (readable at a viewer's fit-to-window)."""
    image = Image.fromarray(pixels)
    height, width = pixels.shape[:2]
    size = max(10, min(width // 28, height // 14))
    font = _font(size)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    margin = max(2, size // 3)
    draw.rectangle((0, 0, min(width, right - left + 2 * margin), bottom - top + 2 * margin), fill=(0, 0, 0))
    draw.text((margin - left, margin - top), text, font=font, fill=(255, 255, 255))
    return np.asarray(image)


def blend(film: np.ndarray, prediction: Prediction) -> np.ndarray:
    """Grayscale film (any dtype the decoder gives) -> RGB uint8 with the heatmap over it, at the film's size."""
    explanation = prediction.explanation
    if explanation is None or explanation.cam is None:
        raise HeatmapUnavailableError("no Grad-CAM map in this prediction; predict with explain=true")
    gray = to_unit_float(film[..., 0] if film.ndim == 3 else film)
    height, width = gray.shape
    heat = place_on_image(explanation.cam, width, height, prediction.model.metadata.preprocessing)
    rgba = colorize(heat).astype(np.float32)
    alpha = rgba[..., 3:] / 255.0
    base = np.repeat(gray[..., None] * 255.0, 3, axis=2)
    return np.clip(base * (1 - alpha) + rgba[..., :3] * alpha + 0.5, 0, 255).astype(np.uint8)


def build_sc(prediction: Prediction, source: Dataset, film: np.ndarray, *,
             uid_factory: Callable[[], UID] = generate_uid) -> hd.sc.SCImage:
    """The heatmap Secondary Capture for ``source`` (its header) and ``film`` (its decoded pixels)."""
    pixels = burn_caption(blend(film, prediction), caption(prediction))
    orientation = source.get("PatientOrientation")
    orientation = tuple(orientation) if orientation is not None and len(orientation) == 2 else DEFAULT_ORIENTATION
    meta = prediction.model.metadata
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=uid_factory(), series_number=SERIES_NUMBER,
        sop_instance_uid=uid_factory(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation, transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ManufacturerModelName = meta.name
    sc.SoftwareVersions = str(prediction.model.version)
    sc.BurnedInAnnotation = "YES"
    # the body part tells validators that Laterality (type 2C) is not needed: a chest is unpaired
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    if source.get("Laterality"):
        sc.Laterality = source.Laterality
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = DERIVATION
    sc.LossyImageCompression = "00"
    sc.ImageComments = caption(prediction)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def render(prediction: Prediction, data: bytes, source: Dataset, max_pixels: int) -> hd.sc.SCImage:
    """From the uploaded Part 10 bytes (decoded again here, off the event loop: the data plane keeps no pixels)."""
    return build_sc(prediction, source, decode(data, max_pixels=max_pixels))
