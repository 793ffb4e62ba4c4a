"""DICOMweb (PS3.18) pieces shared by the STOW-RS receiver and sender: multipart/related bodies of DICOM Part 10
instances in and out, the STOW-RS response, and the sender (httpx) with its credentials file.

Multipart parsing is python-multipart's (the parser Starlette uses for forms), fed the whole body: the body limit
middleware has already bounded it.
"""

from __future__ import annotations

import base64
import io
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydicom.dataset import Dataset
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import InvalidInputError, ServiceError

log = logging.getLogger("cxr.dicomweb")

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"
# PS3.18 10.5.3 / PS3.4 C.4.2.1.5 failure reasons, as STOW-RS answers them per instance
PROCESSING_FAILURE, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, CANNOT_UNDERSTAND = 0x0110, 0xA700, 0x0122, 0xC000


class UnsupportedMediaTypeError(ServiceError):
    """A STOW-RS request whose body is not multipart/related; type="application/dicom"."""

    code, status = "unsupported_media_type", 415


class TooManyPartsError(ServiceError):
    code, status = "too_many_files", 413


# -- multipart/related ---------------------------------------------------------------------------------------
def content_type(boundary: str) -> str:
    return f'{MULTIPART}; type="{DICOM}"; boundary={boundary}'


def encode_multipart(parts: Sequence[bytes]) -> tuple[bytes, str]:
    """Part 10 files -> (body, its Content-Type header)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for part in parts:
        body.write(f"--{boundary}\r\nContent-Type: {DICOM}\r\n\r\n".encode("ascii"))
        body.write(part)
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode("ascii"))
    return body.getvalue(), content_type(boundary)


def decode_multipart(body: bytes, header: str | None, *, max_parts: int, max_part_bytes: int) -> list[bytes]:
    """A STOW-RS request body -> its parts' bytes; precise 4xx errors for anything else."""
    media, options = parse_options_header(header or "")
    kind = options.get(b"type", b"").decode("latin-1").strip().lower()
    if media.decode("latin-1").lower() != MULTIPART or kind not in ("", DICOM):
        raise UnsupportedMediaTypeError(f"STOW-RS takes Content-Type: {MULTIPART}; type=\"{DICOM}\"; "
                                        f"boundary=...; got {(header or 'none')[:200]!r}")
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInputError("the multipart/related Content-Type has no boundary parameter")
    parts: list[bytearray] = []
    types: list[str] = []
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise TooManyPartsError(f"more than {max_parts} instances in one STOW-RS request; send fewer per "
                                    "request (CXR_MAX_BATCH_FILES)")
        parts.append(bytearray())
        types.append("")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1] += data[start:end]
        if len(parts[-1]) > max_part_bytes:
            from app.errors import UploadTooLargeError

            raise UploadTooLargeError(f"instance {len(parts)} exceeds the limit of {max_part_bytes} bytes")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if header_name.decode("latin-1").strip().lower() == "content-type":
            types[-1] = header_value.decode("latin-1").split(";")[0].strip().lower()
        header_name.clear()
        header_value.clear()

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_part_data": on_part_data,
                                        "on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end})
    try:
        parser.write(body)
        parser.finalize()
    except ServiceError:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends: the body is malformed
        raise InvalidInputError(f"the multipart/related body cannot be parsed: {type(exc).__name__}") from None
    for index, kind in enumerate(types, start=1):
        if kind not in ("", DICOM):
            raise UnsupportedMediaTypeError(f"part {index} is {kind!r}; every part must be {DICOM}")
    if not parts:
        raise InvalidInputError("the multipart/related body holds no instance")
    return [bytes(part) for part in parts]


# -- the STOW-RS response (PS3.18 10.5.3, DICOM JSON) --------------------------------------------------------
def _sq(items: list[dict[str, object]]) -> dict[str, object]:
    return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}


def reference(sop_class: str, sop_instance: str, *, failure: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {"00081150": {"vr": "UI", "Value": [sop_class]},
                               "00081155": {"vr": "UI", "Value": [sop_instance]}}
    if failure is not None:
        item["00081197"] = {"vr": "US", "Value": [failure]}
    return item


def stow_response(stored: list[dict[str, object]], failed: list[dict[str, object]]) -> tuple[int, dict[str, object]]:
    """(HTTP status, body): 200 all stored, 202 some failed, 409 none stored (PS3.18 Table 10.5.3-1)."""
    body: dict[str, object] = {}
    if stored:
        body["00081199"] = _sq(stored)  # ReferencedSOPSequence
    if failed:
        body["00081198"] = _sq(failed)  # FailedSOPSequence
    status = 200 if not failed else 202 if stored else 409
    return status, body


# -- the sender ----------------------------------------------------------------------------------------------
def read_auth(path: Path) -> str:
    """The Authorization header value from the credentials file ('Bearer <token>' or 'Basic <user>:<password>');
    ValueError naming what is wrong (never the secret)."""
    try:
        line = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"CXR_DICOMWEB_AUTH_FILE={path} cannot be read: {type(exc).__name__}") from None
    scheme, _, secret = line.partition(" ")
    secret = secret.strip()
    if scheme.lower() == "bearer" and secret and "\n" not in secret:
        return f"Bearer {secret}"
    if scheme.lower() == "basic" and ":" in secret and "\n" not in secret:
        return "Basic " + base64.b64encode(secret.encode("utf-8")).decode("ascii")
    raise ValueError(f"CXR_DICOMWEB_AUTH_FILE={path} must hold one line, 'Bearer <token>' or "
                     "'Basic <user>:<password>'")


class StowSender:
    """POSTs result instances to ``<base_url>/studies``; one connection pool, reused across results."""

    def __init__(self, base_url: str, *, timeout: float, auth_file: Path | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/studies"
        headers = {"Accept": DICOM_JSON}
        if auth_file is not None:
            headers["Authorization"] = read_auth(auth_file)
        self._client = httpx.Client(timeout=timeout, headers=headers)

    def describe(self) -> str:
        return f"STOW-RS {self.url}"

    def send_once(self, datasets: Sequence[Dataset]) -> str | None:
        """None on success, else why not (status codes and failure reasons only: no patient data, no UIDs)."""
        from app.renderers.dicom_sr import encode

        body, header = encode_multipart([encode(dataset) for dataset in datasets])
        try:
            response = self._client.post(self.url, content=body, headers={"Content-Type": header})
        except httpx.HTTPError as exc:
            return f"cannot reach the DICOMweb destination: {type(exc).__name__}"
        if response.status_code == 200:
            return None
        reasons: list[str] = []
        try:
            failed = response.json().get("00081198", {}).get("Value", [])
            reasons = [f"0x{int(item['00081197']['Value'][0]):04X}" for item in failed if "00081197" in item]
        except (ValueError, AttributeError, KeyError, IndexError, TypeError):
            pass
        detail = f" (failure reasons {', '.join(reasons)})" if reasons else ""
        return f"STOW-RS answered HTTP {response.status_code}{detail}"

    def close(self) -> None:
        self._client.close()
