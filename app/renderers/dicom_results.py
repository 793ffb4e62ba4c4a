"""The DICOM objects for one result: the heatmap image(s) (per ``CXR_DICOM_HEATMAP``) and the SR that references
them, in the order a PACS should receive them (images first, so the SR's references resolve on arrival)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from app.dataplane import Prediction
from app.renderers import dicom_heatmap, dicom_sr

HEATMAP_MODES = ("sc", "pm", "both", "off")
IMPLEMENTED_MODES = ("sc", "off")  # the Parametric Map ("pm", "both") is not built yet: refused at start


def wants_heatmap(mode: str) -> bool:
    return mode != "off"


def build(prediction: Prediction, data: bytes, *, mode: str, max_pixels: int) -> list[Dataset]:
    """[heatmap SC, SR] (mode "sc", with a Grad-CAM map in ``prediction``) or [SR] (mode "off", or no map)."""
    source = dicom_sr.read_source(data)
    heatmaps: list[Dataset] = []
    if mode == "sc" and prediction.explanation is not None:
        heatmaps.append(dicom_heatmap.render(prediction, data, source, max_pixels))
    return [*heatmaps, dicom_sr.build_sr(prediction, source, heatmaps=heatmaps)]
