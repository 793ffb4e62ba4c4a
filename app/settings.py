"""All service configuration, from the environment (prefix ``CXR_``), validated at start-up."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.workers import parse_workers, usable_cpus
from model_store.registry import DEFAULT_STORE
from model_store.site_calibration import POINT_NAME

# the audit store's default home: outside the checkout, writable without root (XDG base directory spec)
STATE_HOME = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
DEFAULT_AUDIT_PATH = STATE_HOME / "cxr-serve" / "audit.db"
CPU_DEFAULT_BATCH = 16
GPU_DEFAULT_BATCH = 64


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset), at most 64."""
    return min(64, usable_cpus())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CXR_", env_file=None, extra="ignore")

    # Each description says what a correct value looks like: it is quoted in start-up errors and docs/configuration.md.
    host: str = Field("127.0.0.1", description="interface to listen on, e.g. 127.0.0.1 or 0.0.0.0 "
                      "(containers); beyond loopback, protected routes need API keys or sign-on configured")
    port: int = Field(8000, ge=1, le=65535, description="TCP port, 1-65535, e.g. 8000")
    workers: int | Literal["auto"] = Field("auto", description="uvicorn worker processes: auto (the CPUs this "
                                           "process may use, cgroup CPU quota included, at most 8; 1 where a GPU is "
                                           "used) or 1-64; each holds its own model copy (~0.9 GiB)")

    model_store: Path = Field(DEFAULT_STORE, description="folder holding <name>/<version>/model.h5, e.g. "
                              "/models; default: the model_store/ package folder (the shipped model)")
    model_name: str = Field("pneumonia", min_length=1, description="model folder name in the store, e.g. pneumonia")
    model_version: str | None = Field(None, description="a positive integer, e.g. 1; unset or 'latest' = newest")
    device: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto, cpu or gpu (gpu fails if none)")
    operating_point: str | None = Field(None, description="the named operating point that decides answers when a "
                                        "request names none, e.g. screening; it must exist in the served version "
                                        "(start-up and reloads refuse a version without it); unset = the version's "
                                        "own default (screening for a site-calibrated version, default = the "
                                        "stored threshold for v1/v2)")

    gate: Literal["refuse", "flag", "off"] = Field("refuse", description="input gate: refuse (422 "
                                                  "not_a_chest_xray for what is not a frontal chest radiograph), "
                                                  "flag (answer but mark the result), or off")
    gate_model_store: Path = Field(DEFAULT_STORE, description="folder holding <gate name>/<version>/model.h5, e.g. "
                                   "/models; default: the model_store/ package folder (the shipped gate), so a "
                                   "site's own classifier store needs no copy of it")
    gate_model_name: str = Field("gate", min_length=1, description="gate model folder name in the store, e.g. gate")
    gate_model_version: str | None = Field(None, description="gate model version, a positive integer, e.g. 1; "
                                           "unset or 'latest' = newest")
    gate_max_colourfulness: float = Field(0.08, gt=0, le=1.0, description="colour images above this "
                                          "colourfulness (0-1; grey = 0, fundus photos 0.18-0.6) are refused, "
                                          "e.g. 0.08; 1 = no colour check")
    gate_header_rules: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["modality", "body_part", "view_position"],
        description="comma-separated DICOM header rules to enforce, any of modality (CR/DX only), body_part "
                    "(BodyPartExamined CHEST where present), view_position (PA/AP where present); empty = none, "
                    "for sites whose headers are unreliable")

    max_batch_size: int | None = Field(None, ge=1, le=1024, description="images per model call, 1-1024; "
                                       "unset: 16 on CPU, 64 on GPU")
    # 25, not 5: a full-resolution JPEG takes ~5 ms to prepare, so 5 ms let about one more image join; waiting for
    # four or five costs 5-12 % less CPU per request under load (docs/operations.md), never delays a lone request
    max_delay_ms: float = Field(25.0, ge=0, le=1000, description="ms a batch may wait for more images, 0-1000, "
                                "e.g. 25 (only while more are on their way: a lone request never waits)")
    queue_limit: int = Field(256, ge=1, le=100_000, description="images waiting for the model before 503 + "
                             "Retry-After, e.g. 256")
    decode_threads: int = Field(default_factory=usable_cores, ge=1, le=64,
                                description="threads decoding and preprocessing uploads, 1-64; unset: cxr-serve "
                                "gives each worker its share of the CPUs it may use (CPUs / workers, e.g. 1)")
    runtime: Literal["auto", "keras", "keras-bf16", "tflite-int8", "keras-fp16"] = Field(
        "auto", description="how the model runs: auto (the fastest runtime that passes verification against the "
        "float32 model on this machine), keras (the float32 reference, no acceleration), keras-bf16 (oneDNN "
        "bfloat16, CPUs with avx512_bf16), tflite-int8 (TFLite dynamic-range int8) or keras-fp16 (GPU float16)")

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024, description="largest file, in bytes (>= 1024), "
                                  "e.g. 20971520 (20 MiB)")
    max_pixels: int = Field(50_000_000, ge=64, description="largest image in pixels (width x height, >= 64), read "
                            "from the header before decoding, e.g. 50000000")
    max_batch_files: int = Field(32, ge=1, le=1024, description="most files in one /predict/batch request, 1-1024")
    min_image_side: int = Field(32, ge=1, le=4096, description="shortest image side accepted, in pixels, 1-4096, "
                                "e.g. 32 (a 1x1 upload is not a radiograph)")
    max_aspect_ratio: float = Field(4.0, ge=1.0, le=1000.0, description="longest / shortest side accepted, 1-1000, "
                                    "e.g. 4 (real chest films are under 3)")
    explain_layer: str | None = Field(None, description="layer Grad-CAM explains, a layer name of the served model "
                                      "with a spatial output, e.g. conv6; unset = its last convolution")
    explain_overlay_max_side: int = Field(512, ge=32, le=4096, description="longer side of the heatmap overlay PNG "
                                          "in pixels, 32-4096, e.g. 512 (the upload's aspect ratio is kept)")

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="deprecated: "
                                                     "comma-separated keys, each >= 16 characters, each with every "
                                                     "scope; use CXR_API_KEYS_FILE")
    api_keys_file: Path | None = Field(None, description="API key file written by cxr-keys (names, scopes and "
                                       "SHA-256 hashes, one JSON object per line), e.g. /run/secrets/cxr-api-keys; "
                                       "re-read when it changes")
    oidc_jwks: str | None = Field(None, description="hospital sign-on: the identity provider's JWKS, an https:// "
                                  "URL (cached, re-fetched for an unknown kid) or a file path, e.g. "
                                  "https://sso.hospital.org/realms/cxr/protocol/openid-connect/certs")
    oidc_issuer: str | None = Field(None, description="the tokens' iss, e.g. https://sso.hospital.org/realms/cxr; "
                                    "required with CXR_OIDC_JWKS")
    oidc_audience: str | None = Field(None, description="the tokens' aud naming this service, e.g. cxr-serve; "
                                      "required with CXR_OIDC_JWKS")
    oidc_roles_claim: str | None = Field(None, description="optional claim (dotted path) whose cxr:<scope> "
                                         "entries also grant scopes, e.g. realm_access.roles (Keycloak)")
    oidc_jwks_cooldown_s: float = Field(30.0, ge=0, le=3600, description="least seconds between two JWKS "
                                        "fetches forced by tokens naming an unknown kid (key rotation), 0-3600, "
                                        "e.g. 30; keeps forged kids from hammering the identity provider")
    allow_unauthenticated: bool = Field(False, description="true = serve every route without credentials although "
                                        "CXR_HOST is not loopback (only behind a proxy or mesh that authenticates); "
                                        "false = refuse with 401 until keys or sign-on are configured")
    protect_metrics: bool = Field(False, description="true = /metrics needs the monitor scope (give Prometheus a "
                                  "key: bearer credentials_file); false = open, like the health probes")
    rate_limit: str | None = Field(None, description="requests per caller (key name or token subject), N/second, "
                                   "N/minute or N/hour, e.g. 600/minute; beyond it 429 + Retry-After; unset = none")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated "
                                                         "origins, e.g. https://viewer.example.org; empty = no CORS")

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="debug, info, warning "
                                                                    "or error")
    log_format: Literal["text", "json"] = Field("text", description="text, or json (one object per line)")
    access_log: bool = Field(True, description="log one line per request (with its request id): true or false")
    pin_workers: bool = Field(True, description="with a worker per CPU (CXR_WORKERS=auto on CPU), keep each "
                              "worker's threads on a CPU of its own: true, or false to leave placement to the kernel")
    reuse_port: bool = Field(True, description="with several workers, each listens on a socket of its own "
                             "(SO_REUSEPORT, Linux) so the kernel spreads connections over them: true, or false "
                             "for one socket they share")
    fast_predict: bool = Field(True, description="serve POST /predict's common case (one file, a JSON answer) "
                               "without FastAPI's per-request machinery, with the same answers: true or false")
    timeout_keep_alive: int = Field(5, ge=1, le=600, description="seconds an idle keep-alive connection is kept, "
                                    "1-600")
    graceful_timeout: int = Field(30, ge=1, le=600, description="seconds to finish requests and drain the queue "
                                  "on shutdown, 1-600")
    # HTTPS from the service itself, for deployments without a TLS-terminating proxy: both or neither
    tls_cert: Path | None = Field(None, description="PEM certificate (chain) for HTTPS, e.g. /run/secrets/tls.crt; "
                                  "set with CXR_TLS_KEY; unset = plain HTTP (behind a proxy that terminates TLS)")
    tls_key: Path | None = Field(None, description="unencrypted PEM private key of CXR_TLS_CERT, e.g. "
                                 "/run/secrets/tls.key; set with CXR_TLS_CERT")

    audit_enabled: bool = Field(True, description="record every answer and refusal in the audit store: true or "
                                "false (false also turns off /feedback and /monitoring)")
    audit_url: str | None = Field(None, description="audit store URL, e.g. postgresql://cxr:secret@db:5432/cxr_audit "
                                  "(psycopg 3) or sqlite:////var/lib/cxr/audit.db; unset = SQLite at "
                                  "CXR_AUDIT_PATH")
    audit_path: Path = Field(DEFAULT_AUDIT_PATH, description="SQLite audit file used when CXR_AUDIT_URL is unset, "
                             "e.g. /var/lib/cxr-serve/audit.db; default: $XDG_STATE_HOME (or ~/.local/state)"
                             "/cxr-serve/audit.db")
    audit_required: bool = Field(False, description="fail closed: true = readiness 503 and predictions refused "
                                 "(503 audit_unavailable) while the audit store is unreachable; false = keep "
                                 "serving and buffer")
    audit_durable: bool = Field(False, description="true = an answer leaves only after its audit record is "
                                "committed (group commit: concurrent answers share one transaction), so a crash "
                                "loses no answered record; false = buffered (faster: records are committed "
                                "within ~50 ms, a crash loses what is buffered). Implied by CXR_AUDIT_REQUIRED=true")
    audit_commit_timeout_s: float = Field(10.0, gt=0, le=600, description="durable mode: seconds an answer "
                                          "waits for its record's commit before it is refused (503 "
                                          "audit_unavailable), e.g. 10")
    audit_flush_timeout_s: float = Field(3.0, gt=0, le=600, description="seconds the shutdown spends writing "
                                         "buffered audit records, e.g. 3; what is left then is counted as dropped "
                                         "(reason shutdown) and logged, so a stop never waits on a broken store")
    audit_buffer: int = Field(10_000, ge=1, le=10_000_000, description="audit records held in memory while the "
                              "store is slow or down, 1-10000000, e.g. 10000; beyond it records are counted "
                              "in cxr_audit_records_dropped_total and logged, not stored")
    audit_batch_size: int = Field(500, ge=1, le=100_000, description="audit records per insert, 1-100000, "
                                  "e.g. 500")
    audit_window_hours: float = Field(168.0, gt=0, le=24 * 366, description="rolling window of /monitoring and "
                                      "the cxr_monitor_* gauges, in hours, e.g. 168 (7 days)")
    audit_refresh_s: float = Field(60.0, ge=1, le=86_400, description="seconds between refreshes of the "
                                   "cxr_monitor_* gauges, 1-86400, e.g. 60")
    audit_salt: str | None = Field(None, min_length=16, description="secret (>= 16 characters, e.g. 32 random "
                                   "hex digits) keying the hashes of DICOM UIDs in the audit store; unset = "
                                   "UIDs are not recorded at all")

    # The DICOM node (a PACS routes CR/DX images to it; the SR goes back by C-STORE). Off unless a port is set.
    dicom_port: int | None = Field(None, ge=1, le=65535, description="DICOM (C-STORE) listening port, 1-65535, "
                                   "e.g. 11112; unset = no DICOM node. Listens on CXR_HOST")
    dicom_ae_title: str = Field("CXR_SERVE", description="this node's AE title: 1-16 characters, no backslash, "
                                "e.g. CXR_SERVE (the PACS sends to it; the SR is sent from it)")
    dicom_allowed_calling_aets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated AE titles allowed to send images, e.g. ORTHANC,PACS1; "
                                          "empty = any calling AE (only on a trusted network)")
    dicom_destination_host: str | None = Field(None, description="where SRs are sent (C-STORE): host name or "
                                               "address of the PACS, e.g. pacs.hospital.org; the C-STORE "
                                               "destination: all three or none")
    dicom_destination_port: int | None = Field(None, ge=1, le=65535, description="the PACS's DICOM port, "
                                               "1-65535, e.g. 4242; the C-STORE destination: all three or none")
    dicom_destination_ae_title: str | None = Field(None, description="the PACS's AE title, 1-16 characters, "
                                                   "e.g. ORTHANC; the C-STORE destination: all three or none")
    dicom_send_retries: int = Field(3, ge=0, le=20, description="extra attempts to deliver an SR after a failed "
                                    "C-STORE, 0-20, e.g. 3 (then it is dropped with an error log and metric)")
    dicom_retry_delay_s: float = Field(2.0, ge=0, le=600, description="seconds before the first retry, doubled "
                                       "per retry, 0-600, e.g. 2")
    dicom_queue_size: int = Field(32, ge=1, le=10_000, description="images received and not yet answered with "
                                  "an SR, 1-10000, e.g. 32; beyond it C-STORE answers 'out of resources' "
                                  "(0xA700) so the PACS retries later")
    dicom_timeout_s: float = Field(30.0, ge=1, le=600, description="network timeout for DICOM associations, in "
                                   "seconds, 1-600, e.g. 30")
    dicom_heatmap: str = Field("sc", description="heatmap sent beside each SR from a DICOM transport: sc (a "
                               "Secondary Capture of the film with the Grad-CAM map over it) or off; pm and both "
                               "(Parametric Map) are not implemented yet and refused")

    # DICOMweb (STOW-RS) in and out, beside or instead of DIMSE
    dicomweb_receive: bool = Field(False, description="true = STOW-RS receiver at POST /dicomweb/studies (CR/DX "
                                   "images, same gate, limits and queue as the DICOM node)")
    dicomweb_destination_url: str | None = Field(None, description="DICOMweb base URL results are sent to by "
                                                 "STOW-RS (POST <url>/studies), e.g. "
                                                 "https://pacs.hospital.org/dicom-web; with or instead of the "
                                                 "C-STORE destination")
    dicomweb_auth_file: Path | None = Field(None, description="file holding the DICOMweb destination's "
                                            "credentials, one line: 'Bearer <token>' or 'Basic <user>:<password>'; "
                                            "unset = no authentication")

    # DICOM TLS (PS3.15 BCP 195 profile): on the node's port and, separately, towards the SR destination
    dicom_tls_cert: Path | None = Field(None, description="PEM certificate of the DICOM node, e.g. "
                                        "/run/secrets/dicom.crt; set with CXR_DICOM_TLS_KEY: the node then "
                                        "speaks only DICOM TLS (plain associations are refused); also the client "
                                        "certificate towards a TLS destination")
    dicom_tls_key: Path | None = Field(None, description="unencrypted PEM private key of CXR_DICOM_TLS_CERT, e.g. "
                                       "/run/secrets/dicom.key")
    dicom_tls_ca: Path | None = Field(None, description="PEM CA certificate(s), e.g. /run/secrets/hospital-ca.crt: "
                                      "callers must present a certificate one of them signed; unset = no client "
                                      "certificate asked for (needs CXR_DICOM_TLS_CERT)")
    dicom_destination_tls: bool = Field(False, description="send SRs over DICOM TLS: true or false; the "
                                        "destination's certificate must name CXR_DICOM_DESTINATION_HOST")
    dicom_destination_tls_ca: Path | None = Field(None, description="PEM CA certificate(s) the destination's "
                                                  "certificate must chain to, e.g. /run/secrets/pacs-ca.crt; unset = "
                                                  "the system trust store (needs CXR_DICOM_DESTINATION_TLS=true)")

    @field_validator("log_level", "log_format", "device", "gate", "runtime", mode="before")
    @classmethod
    def lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("workers", mode="before")
    @classmethod
    def check_workers(cls, value: object) -> object:
        return parse_workers(value)

    @field_validator("api_keys", "cors_origins", "gate_header_rules", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("gate_header_rules")
    @classmethod
    def check_rules(cls, rules: list[str]) -> list[str]:
        unknown = sorted(set(rules) - {"modality", "body_part", "view_position"})
        if unknown:
            raise ValueError(f"unknown gate header rules {unknown}; use modality, body_part, view_position")
        return rules

    @field_validator("model_version", "gate_model_version", mode="before")
    @classmethod
    def check_version(cls, value: object) -> object:
        if value in (None, "", "latest"):
            return None
        if not str(value).isdigit() or int(str(value)) < 1:
            raise ValueError(f"must be a positive integer or 'latest', got {value!r}")
        return str(int(str(value)))

    @field_validator("operating_point", mode="before")
    @classmethod
    def check_operating_point(cls, value: object) -> object:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        name = str(value).strip()
        if not POINT_NAME.match(name):
            raise ValueError(f"must be an operating point name (lower case letters, digits, _ or -, e.g. "
                             f"screening), got {value!r}")
        return name

    @field_validator("audit_url")
    @classmethod
    def check_audit_url(cls, url: str | None) -> str | None:
        if not url:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            backend = make_url(url).get_backend_name()
        except ArgumentError:
            backend = ""
        if backend not in ("sqlite", "postgresql"):
            raise ValueError("CXR_AUDIT_URL must be a postgresql://... or sqlite:///... URL")
        return url

    @field_validator("api_keys")
    @classmethod
    def check_keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if len(key) < 16:
                raise ValueError("each CXR_API_KEYS entry must be at least 16 characters (use a random token)")
        return keys

    @field_validator("api_keys_file", "oidc_jwks", "oidc_issuer", "oidc_audience", "oidc_roles_claim",
                     "rate_limit", mode="before")
    @classmethod
    def empty_is_unset(cls, value: object) -> object:
        """Compose's ``${VAR:-}`` hands an empty string for an unset variable."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("rate_limit")
    @classmethod
    def check_rate(cls, value: str | None) -> str | None:
        if not value:
            return None
        from app.access.ratelimit import parse_rate

        parse_rate(value)
        return value.strip()

    @model_validator(mode="after")
    def check_oidc(self) -> Settings:
        if self.oidc_jwks:
            missing = [f"CXR_{name.upper()}" for name in ("oidc_issuer", "oidc_audience") if not getattr(self, name)]
            if missing:
                raise ValueError(f"CXR_OIDC_JWKS is set, so tokens must be pinned to their issuer and audience: "
                                 f"set {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def durable_when_required(self) -> Settings:
        # fail closed means no answer without its record, which only durable mode guarantees
        if self.audit_required and not self.audit_durable:
            if "audit_durable" in self.model_fields_set:
                raise ValueError("CXR_AUDIT_REQUIRED=true needs CXR_AUDIT_DURABLE=true (or leave it unset)")
            self.audit_durable = True
        return self

    @model_validator(mode="after")
    def check_store(self) -> Settings:
        if not self.model_store.is_dir():
            raise ValueError(f"CXR_MODEL_STORE={self.model_store} is not a directory "
                             "(expected <store>/<name>/<version>/model.h5)")
        return self

    @field_validator("dicom_allowed_calling_aets", mode="before")
    @classmethod
    def split_aets(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("dicom_ae_title", "dicom_destination_ae_title")
    @classmethod
    def check_ae_title(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or len(value.strip()) > 16 or "\\" in value
                                  or not value.isprintable()):
            raise ValueError(f"{value!r} is not an AE title: 1-16 printable characters, no backslash")
        return value.strip() if value is not None else None

    @field_validator("dicom_allowed_calling_aets")
    @classmethod
    def check_calling_aets(cls, values: list[str]) -> list[str]:
        for value in values:
            cls.check_ae_title(value)
        return values

    @field_validator("dicom_heatmap", mode="before")
    @classmethod
    def check_heatmap(cls, value: object) -> object:
        mode = str(value).strip().lower()
        if mode in ("pm", "both"):
            raise ValueError(f"CXR_DICOM_HEATMAP={mode}: the Parametric Map is not implemented in this version; "
                             "use sc (Secondary Capture) or off")
        if mode not in ("sc", "off"):
            raise ValueError(f"{value!r} is not a heatmap mode: use sc (Secondary Capture) or off")
        return mode

    @field_validator("dicomweb_destination_url")
    @classmethod
    def check_dicomweb_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not a DICOMweb base URL: use http(s)://host[:port]/path, e.g. "
                             "https://pacs.hospital.org/dicom-web")
        return url.rstrip("/") if url else None

    @field_validator("dicomweb_auth_file")
    @classmethod
    def check_auth_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            from app.dicomweb import read_auth  # the same parser the sender uses: a bad file fails at start

            read_auth(path)
        return path

    @model_validator(mode="after")
    def check_dicom_destination(self) -> Settings:
        names = ("dicom_destination_host", "dicom_destination_port", "dicom_destination_ae_title")
        missing = [f"CXR_{name.upper()}" for name in names if getattr(self, name) is None]
        if 0 < len(missing) < len(names):
            raise ValueError(f"the C-STORE destination is incomplete: set {', '.join(missing)} too")
        if self.dicom_results_enabled and missing and self.dicomweb_destination_url is None:
            given = "CXR_DICOM_PORT" if self.dicom_port is not None else "CXR_DICOMWEB_RECEIVE"
            raise ValueError(f"{given} is set, so a result destination is needed: set {', '.join(missing)} "
                             "(C-STORE) and/or CXR_DICOMWEB_DESTINATION_URL (STOW-RS)")
        return self

    @property
    def dicom_results_enabled(self) -> bool:
        """Whether images arrive by a DICOM transport (the node's C-STORE port, or STOW-RS)."""
        return self.dicom_port is not None or self.dicomweb_receive

    @property
    def cstore_destination(self) -> bool:
        return self.dicom_destination_host is not None

    @model_validator(mode="after")
    def check_tls(self) -> Settings:
        from app.tls import TlsConfigError, check_ca, check_pair

        def pair(cert: str, key: str) -> None:
            given = (getattr(self, cert) is not None, getattr(self, key) is not None)
            if given == (True, True):
                check_pair(getattr(self, cert), getattr(self, key), f"CXR_{cert.upper()}", f"CXR_{key.upper()}")
            elif any(given):
                have, lack = (cert, key) if given[0] else (key, cert)
                raise TlsConfigError(f"CXR_{have.upper()} is set but CXR_{lack.upper()} is not: set both, or "
                                     "neither")

        pair("tls_cert", "tls_key")
        pair("dicom_tls_cert", "dicom_tls_key")
        if self.dicom_tls_ca is not None:
            if self.dicom_tls_cert is None:
                raise TlsConfigError("CXR_DICOM_TLS_CA needs CXR_DICOM_TLS_CERT and CXR_DICOM_TLS_KEY (the node's "
                                     "own certificate): client certificates are only asked for over TLS")
            check_ca(self.dicom_tls_ca, "CXR_DICOM_TLS_CA")
        if self.dicom_destination_tls_ca is not None:
            if not self.dicom_destination_tls:
                raise TlsConfigError("CXR_DICOM_DESTINATION_TLS_CA is set but CXR_DICOM_DESTINATION_TLS is not "
                                     "true: set CXR_DICOM_DESTINATION_TLS=true to send SRs over TLS")
            check_ca(self.dicom_destination_tls_ca, "CXR_DICOM_DESTINATION_TLS_CA")
        return self

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Settings from the environment (+ overrides); raises SettingsError with one line per bad value."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(explain(exc)) from None

    def batch_size_for(self, gpu: bool) -> int:
        if self.max_batch_size is not None:
            return self.max_batch_size
        return GPU_DEFAULT_BATCH if gpu else CPU_DEFAULT_BATCH


class SettingsError(ValueError):
    """Invalid configuration; the message names each CXR_ variable and what a correct value looks like."""


def explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error.get("loc") else ""
        info = Settings.model_fields.get(field)
        name = f"CXR_{field.upper()}" if field else "configuration"
        given = f"={error['input']!r}" if field and not isinstance(error.get("input"), dict) else ""
        if field in ("audit_url", "audit_salt"):  # may hold a password or a secret: never echoed
            given = ""
        hint = f"; expected {info.description}" if info is not None and info.description else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        lines.append(f"{name}{given}: {message}{hint}")
    return "\n".join(lines)
