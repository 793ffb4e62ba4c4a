"""One HDF5 file per model: the Keras model (optimizer included) plus our JSON metadata document.

Keras writes the model (legacy HDF5 format); we add one HDF5 attribute, ``cxr_metadata``, with h5py.
Loading checks the file before Keras sees it: it must be HDF5, carry our metadata, and its model config may
only name plain built-in layers, so a model file can never run code (no Lambda, no custom objects).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from model_store.preprocessing import PreprocessingSpec
from model_store.site_calibration import SiteCalibration, validate_operating_points

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

METADATA_ATTR = "cxr_metadata"
FORMAT_VERSION = 1

# Built-in Keras classes a model file may name. Anything else (Lambda, TFOpLambda, custom objects, ...) is
# refused: deserialising them can execute code stored in the file.
ALLOWED_CLASSES = frozenset(
    {
        "Sequential", "Functional", "Model", "InputLayer", "Conv2D", "SeparableConv2D", "DepthwiseConv2D",
        "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten",
        "Dense", "Dropout", "SpatialDropout2D", "BatchNormalization", "LayerNormalization", "Activation",
        "ReLU", "LeakyReLU", "Softmax", "Add", "Average", "Concatenate", "Rescaling", "Reshape",
        # a Functional model's config names the tensors between layers so (data only: shape, dtype, history)
        "__keras_tensor__",
        # config helper objects (not layers)
        "DTypePolicy", "FloatDTypePolicy", "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "Zeros",
        "Ones", "L1", "L2", "L1L2", "RandomNormal", "RandomUniform", "TruncatedNormal", "Constant",
        "MaxNorm", "NonNeg", "UnitNorm",
    }
)
ALLOWED_MODULES = frozenset({None, "keras", "keras.layers", "keras.models", "keras.initializers",
                             "keras.regularizers", "keras.constraints", "keras.src.models.functional",
                             "keras.src.models.sequential", "keras.src.engine.functional",
                             "keras.src.engine.sequential"})


class ArtifactError(ValueError):
    """The file is not a usable, safe cxr-serve model artifact. The message says why."""


@dataclass
class ModelMetadata:
    """Everything serving needs to know about a model, stored inside the artifact."""

    name: str
    version: str
    class_names: list[str]
    preprocessing: PreprocessingSpec
    positive_class: str = "PNEUMONIA"
    decision_threshold: float = 0.5
    # temperature scaling fitted on validation (model_store.calibration); the threshold is on that scale
    temperature: float = 1.0
    # a hospital's local recalibration (model_store.site_calibration.SiteCalibration as a dict), its named
    # thresholds on the served scale and which one answers by default; set only by ``cxr-site calibrate``
    site_calibration: dict[str, Any] | None = None
    operating_points: dict[str, float] = field(default_factory=dict)
    default_operating_point: str | None = None
    # where a derived version came from (base version and sha256, the site sample's counts, ...)
    provenance: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    code_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ArtifactError(f"class_names must be two or more distinct names, got {self.class_names!r}")
        if self.positive_class not in self.class_names:
            raise ArtifactError(f"positive_class {self.positive_class!r} is not one of {self.class_names}")
        if not 0.0 <= self.decision_threshold <= 1.0:
            raise ArtifactError(f"decision_threshold must be in [0, 1], got {self.decision_threshold!r}")
        if not (isinstance(self.temperature, int | float) and 0.01 <= self.temperature <= 100.0):
            raise ArtifactError(f"temperature must be a number in [0.01, 100] (1.0 = uncalibrated), "
                                f"got {self.temperature!r}")
        try:
            if self.site_calibration is not None:
                SiteCalibration.from_dict(self.site_calibration)
            validate_operating_points(self.operating_points, self.default_operating_point)
        except ValueError as exc:
            raise ArtifactError(str(exc)) from exc
        if self.default_operating_point is not None and not np.isclose(
                self.operating_points[self.default_operating_point], self.decision_threshold):
            raise ArtifactError("decision_threshold must equal the default operating point's threshold")

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocessing"] = self.preprocessing.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetadata:
        data = dict(data)
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"unsupported metadata format_version {data.get('format_version')!r}; "
                                f"this code reads {FORMAT_VERSION}")
        try:
            data["preprocessing"] = PreprocessingSpec.from_dict(data["preprocessing"])
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"invalid model metadata: {exc}") from exc


@dataclass
class LoadedArtifact:
    model: keras.Model
    metadata: ModelMetadata
    sha256: str
    path: Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_artifact(model: keras.Model, metadata: ModelMetadata, path: str | os.PathLike[str],
                  include_optimizer: bool = True) -> str:
    """Write model + metadata to ``path`` atomically (temp file, then rename). Returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".h5", dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        with _quiet_legacy_warning():
            model.save(tmp_name, include_optimizer=include_optimizer)
        with h5py.File(tmp_name, "a") as handle:
            handle.attrs[METADATA_ATTR] = json.dumps(metadata.to_dict(), sort_keys=True)
        os.chmod(tmp_name, 0o644)  # mkstemp makes 0600; images run as another user must read it
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return file_sha256(path)


def copy_with_metadata(source: str | os.PathLike[str], metadata: ModelMetadata,
                       path: str | os.PathLike[str]) -> str:
    """Write a copy of the artifact at ``source`` with ``metadata`` in place of its own, atomically, and return
    the new file's sha256. The weights and the optimizer state are copied byte for byte (a derived version,
    such as a site calibration, never retrains). Refuses to overwrite an existing file: versions are immutable."""
    inspect_artifact(source)  # the source must itself be a valid, safe artifact
    path = Path(path)
    if path.exists():
        raise ArtifactError(f"{path} exists already: model versions are immutable, write a new version")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".h5", dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp_name)
        with h5py.File(tmp_name, "a") as handle:
            handle.attrs[METADATA_ATTR] = json.dumps(metadata.to_dict(), sort_keys=True)
        os.chmod(tmp_name, 0o644)
        os.link(tmp_name, path)  # fails if ``path`` appeared meanwhile, unlike os.replace
    finally:
        os.unlink(tmp_name)
    return file_sha256(path)


@contextlib.contextmanager
def _quiet_legacy_warning() -> Iterator[None]:
    """Keras warns through absl that HDF5 is a legacy format on every save; it is our deliberate choice."""
    from absl import logging as absl_logging

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


def _open_h5(path: Path) -> h5py.File:
    if not path.is_file():
        raise ArtifactError(f"model file not found: {path}")
    if not h5py.is_hdf5(path):
        raise ArtifactError(f"not an HDF5 file: {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise ArtifactError(f"unreadable HDF5 file {path}: {exc}") from exc


def _attr_text(handle: h5py.File, name: str) -> str | None:
    value = handle.attrs.get(name)
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def check_model_config(config: Any, where: str = "model_config") -> None:
    """Refuse any class or module outside the allowlist, anywhere in the (nested) config."""
    if isinstance(config, dict):
        class_name = config.get("class_name")
        if class_name is not None:
            if class_name not in ALLOWED_CLASSES:
                raise ArtifactError(f"refusing model: {where} uses layer/class {class_name!r}, which is not an "
                                    "allowed built-in (Lambda and custom objects can run code)")
            if config.get("module") not in ALLOWED_MODULES:
                raise ArtifactError(f"refusing model: {where} loads {class_name!r} from module "
                                    f"{config.get('module')!r}")
            registered = config.get("registered_name")
            if registered not in (None, class_name):
                raise ArtifactError(f"refusing model: {where} names custom object {registered!r}")
        for key, value in config.items():
            if key in {"function", "function_type"}:
                raise ArtifactError(f"refusing model: {where} carries a serialised function")
            check_model_config(value, where)
    elif isinstance(config, list):
        for item in config:
            check_model_config(item, where)


def _check_no_object_datasets(handle: h5py.File) -> None:
    bad: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind not in "fiub":
            # weight names are stored as attributes, never datasets; anything else may be pickled data
            bad.append(name)

    handle.visititems(visit)
    if bad:
        raise ArtifactError(f"refusing model: non-numeric datasets in file (possible pickled content): {bad[:3]}")


def inspect_artifact(path: str | os.PathLike[str]) -> tuple[ModelMetadata, dict[str, Any]]:
    """Validate the file without building the model. Returns (metadata, keras model config)."""
    path = Path(path)
    with _open_h5(path) as handle:
        meta_text = _attr_text(handle, METADATA_ATTR)
        if meta_text is None:
            raise ArtifactError(f"{path} has no '{METADATA_ATTR}' attribute: not a cxr-serve artifact")
        config_text = _attr_text(handle, "model_config")
        if config_text is None:
            raise ArtifactError(f"{path} has no Keras model_config: not a saved Keras model")
        if "model_weights" not in handle:
            raise ArtifactError(f"{path} has no model_weights group")
        _check_no_object_datasets(handle)
    try:
        metadata = ModelMetadata.from_dict(json.loads(meta_text))
        config = json.loads(config_text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: metadata or model config is not valid JSON: {exc}") from exc
    check_model_config(config)
    return metadata, config


def read_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    return inspect_artifact(path)[0]


def load_artifact(path: str | os.PathLike[str], compile: bool = False) -> LoadedArtifact:
    """Validate, then load. ``compile=True`` also restores the optimizer state (to resume training)."""
    import keras

    path = Path(path)
    metadata, _ = inspect_artifact(path)
    sha256 = file_sha256(path)
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a damaged file
        raise ArtifactError(f"Keras could not load {path}: {type(exc).__name__}: {exc}") from exc
    _check_output_matches(model, metadata, path)
    if compile:
        _compile_with_saved_optimizer(model, path)
    log.info("loaded model %s v%s from %s sha256=%s", metadata.name, metadata.version, path, sha256)
    return LoadedArtifact(model=model, metadata=metadata, sha256=sha256, path=path)


def _check_output_matches(model: keras.Model, metadata: ModelMetadata, path: Path) -> None:
    out_shape = tuple(model.output_shape)
    in_shape = tuple(model.input_shape)
    if out_shape[-1] != len(metadata.class_names):
        raise ArtifactError(f"{path}: model has {out_shape[-1]} outputs but metadata names "
                            f"{len(metadata.class_names)} classes")
    if in_shape[1:] != metadata.preprocessing.input_shape:
        raise ArtifactError(f"{path}: model input {in_shape[1:]} does not match the preprocessing spec "
                            f"{metadata.preprocessing.input_shape}")


def _compile_with_saved_optimizer(model: keras.Model, path: Path) -> None:
    """Compile from the stored training config and restore the optimizer's variables.

    Keras 3's own HDF5 loader builds the optimizer against the wrong variable list, so resuming with it
    fails; we build it against the model's trainable variables and set the saved values ourselves.
    """
    import keras

    with h5py.File(path, "r") as handle:
        training_text = _attr_text(handle, "training_config")
        if training_text is None:
            raise ArtifactError(f"{path} was saved without a training config; cannot resume")
        training_config = json.loads(training_text)
        values: list[np.ndarray] = []
        if "optimizer_weights" in handle:
            group = handle["optimizer_weights"]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            values = [np.asarray(group[name]) for name in names]
    optimizer = keras.optimizers.deserialize(training_config["optimizer_config"])
    loss = training_config.get("loss")
    if isinstance(loss, dict):  # a loss object (e.g. label smoothing), not a name
        loss = keras.losses.deserialize(loss)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    optimizer.build(model.trainable_variables)
    if values:
        if len(values) != len(optimizer.variables):
            raise ArtifactError(f"{path}: saved optimizer has {len(values)} variables, model needs "
                                f"{len(optimizer.variables)}")
        for variable, value in zip(optimizer.variables, values, strict=True):
            variable.assign(value)
