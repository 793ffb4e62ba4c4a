"""Renderers: one Prediction, three representations, one negotiation point (the Accept header).

``application/json`` (default) | ``application/dicom`` (DICOM SR, DICOM uploads only) | ``application/fhir+json``
| ``multipart/related; type="application/dicom"`` (the SR, plus the heatmap Secondary Capture with explain=true).
Renderers never call transports (HTTP routes, the DICOM node); transports pick one here. The SR and FHIR
renderers (highdicom, fhir.resources) are imported on first use, so the default JSON path pays nothing for them.
"""

from __future__ import annotations

import functools

from app.dataplane import Prediction
from app.errors import NotAcceptableError

JSON = "application/json"
DICOM = "application/dicom"
FHIR = "application/fhir+json"
MULTIPART = "multipart/related"  # of application/dicom parts only (PS3.18): SR + heatmap image
OFFERED = (JSON, DICOM, FHIR, MULTIPART)  # in order of preference when the client accepts several equally
_FAST = frozenset({"", "*/*", JSON, "application/*"})


def negotiate(accept: str | None) -> str:
    """The media type to answer with, from an Accept header (RFC 9110: q-values, wildcards, the most specific
    range decides each type's quality); NotAcceptableError when the client accepts none of :data:`OFFERED`."""
    if accept is None or accept.strip() in _FAST:  # what nearly every client sends: no parsing at all
        return JSON
    return _negotiate(accept)


@functools.lru_cache(maxsize=256)  # a client sends the same header every time; bounded against varied ones
def _negotiate(accept: str) -> str:
    ranges = [_parse(part) for part in accept.split(",") if part.strip()]
    best, best_q = None, 0.0
    for offer in OFFERED:  # in preference order, so a tie keeps the earlier offer
        q = _quality_of(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    if best is None:
        raise NotAcceptableError(f"cannot answer with {accept.strip()[:200]!r}; this endpoint offers "
                                 f"{', '.join(OFFERED)} (DICOM SR for DICOM uploads only)")
    return best


def _parse(part: str) -> tuple[str, float]:
    media, _, params = part.strip().partition(";")
    media = media.strip().lower()
    q = 1.0
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        name = name.strip().lower()
        if name == "q":
            try:
                q = min(1.0, max(0.0, float(value)))
            except ValueError:
                q = 0.0
        elif name == "type" and media == MULTIPART and value.strip().strip('"').lower() != DICOM:
            media = f"{MULTIPART}+{value.strip()}"  # multipart of something else: matches no offer
    return media, q


def _quality_of(offer: str, ranges: list[tuple[str, float]]) -> float:
    kind = offer.partition("/")[0]
    specificity, quality = -1, 0.0
    for media, q in ranges:
        level = 2 if media == offer else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
        if level > specificity:
            specificity, quality = level, q
    return quality


def check_upload(media_type: str, data: bytes) -> None:
    """Refuses, before the model runs, an upload the chosen representation cannot be made from."""
    if media_type in (DICOM, MULTIPART):
        from app.renderers import dicom_sr

        dicom_sr.read_source(data)


def render_bytes(media_type: str, prediction: Prediction, data: bytes, request_id: str) -> bytes:
    """A non-JSON representation (CPU work: call it off the event loop)."""
    if media_type == DICOM:
        from app.renderers import dicom_sr

        return dicom_sr.render(prediction, data)
    if media_type == FHIR:
        from app.renderers import fhir

        return fhir.render(prediction, data, request_id)
    raise NotAcceptableError(f"no renderer for {media_type}")


def render_multipart(prediction: Prediction, data: bytes, max_pixels: int) -> tuple[bytes, str]:
    """(body, Content-Type) of ``multipart/related; type="application/dicom"``: the heatmap Secondary Capture
    (when the prediction carries a Grad-CAM map, i.e. explain=true) then the SR that references it."""
    from app.dicomweb import encode_multipart
    from app.renderers import dicom_results, dicom_sr

    datasets = dicom_results.build(prediction, data, mode="sc", max_pixels=max_pixels)
    return encode_multipart([dicom_sr.encode(dataset) for dataset in datasets])
