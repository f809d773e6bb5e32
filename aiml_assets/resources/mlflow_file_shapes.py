"""The shapes of the files MLflow 3.17 writes for a propensity model of ours, as pydantic models: every key MLflow
writes and no other, each value bounded by a pattern, a literal or a length.

They come from a real `mlflow.sklearn.log_model(..., serialization_format="skops")` of our pipeline
(training.log_and_register) downloaded from the registry. Requirements (conda.yaml's pip list) are only
`name==version` pins of the project's lock; columns (signature, input examples) only the training set's feature
columns; the skops types the MLmodel lists only `safe_artifact.TRUSTED_SKOPS_TYPES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Annotated, Literal

from packaging.utils import canonicalize_name
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, Json, StrictBool, StrictFloat, StrictInt, StrictStr,
                      StringConstraints, model_validator)

from aiml_assets.model_inputs import feature_columns
from aiml_assets.resources.safe_artifact import SKOPS_FILE, TRUSTED_SKOPS_TYPES, beyond_trusted, describe_types
from aiml_assets.settings import PROJECT_ROOT, load_settings

LOCK_FILE = PROJECT_ROOT / "requirements.lock"
REGISTERED_NAME = r"[a-z0-9_]+(?:\.[a-z0-9_]+)*"
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,99})==(?P<version>[0-9A-Za-z.+!-]{1,40})")


@lru_cache(maxsize=1)
def locked_pins() -> dict[str, str]:
    """Package (canonical name) -> version, as requirements.lock pins them."""
    try:
        lines = LOCK_FILE.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}  # fail closed: no pin is known, so no requirement is accepted
    return {canonicalize_name(m["name"]): m["version"] for m in map(PIN.fullmatch, lines) if m}


def locked(requirement: str) -> str:
    pin = PIN.fullmatch(requirement)
    if pin is None or locked_pins().get(canonicalize_name(pin["name"])) != pin["version"]:
        raise ValueError(f"not name==version of a package pinned in {LOCK_FILE.name}"
                         + ("" if locked_pins() else f" (no {LOCK_FILE} beside the code)"))
    return requirement


@lru_cache(maxsize=1)
def known_features() -> frozenset[str]:
    """The columns a model of ours may take: the training set's feature columns."""
    return frozenset(feature_columns(load_settings().products))


def _feature(name: str) -> str:
    if name not in known_features():
        raise ValueError("not a feature column of the training set")
    return name


def unique_by(key: Callable = lambda value: value):
    """A validator refusing a list where two items have the same `key`."""
    def unique(values: list) -> list:
        if len({key(value) for value in values}) != len(values):
            raise ValueError("lists the same item twice")
        return values
    return AfterValidator(unique)


def _only_trusted(types: list[str]) -> list[str]:
    if extra := beyond_trusted(types):
        raise ValueError(f"asks skops to trust {describe_types(extra)}; only {', '.join(TRUSTED_SKOPS_TYPES)} is")
    return types


def pattern(regex: str, max_length: int = 64):
    return Annotated[StrictStr, StringConstraints(pattern=f"^(?:{regex})$", max_length=max_length)]


Feature = Annotated[StrictStr, AfterValidator(_feature)]
Features = Annotated[list[Feature], Field(min_length=1), unique_by()]
LockedRequirement = Annotated[StrictStr, AfterValidator(locked)]
Version = pattern(r"[0-9]+(?:\.[0-9]+){0,3}(?:[a-z]+[0-9]*)?(?:\.dev[0-9]+)?", 32)
RegisteredName = pattern(REGISTERED_NAME, 255)
Hex32 = pattern(r"[0-9a-f]{32}", 32)


class Shape(BaseModel):
    """A document with exactly these keys: an unknown key is refused, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- MLmodel ---------------------------------------------------------------------------------------------------

ColumnType = Literal["string", "double", "float", "long", "integer", "boolean"]


class ColumnSpec(Shape):
    type: ColumnType
    name: Feature
    required: StrictBool


class TensorSpec(Shape):
    dtype: Literal["float64", "float32", "int64", "int32"]
    shape: Annotated[list[StrictInt], Field(max_length=2)]


class TensorOutput(Shape):
    type: Literal["tensor"]
    tensor_spec: TensorSpec = Field(alias="tensor-spec")


class ColumnOutput(Shape):
    """An unnamed output column, as MLflow infers it from `predict`'s 1-d result."""

    type: ColumnType
    required: StrictBool


class Signature(Shape):
    """MLflow's model signature (`Signature.to_dict()`): the inputs are feature columns, the output one column."""

    inputs: Json[Annotated[list[ColumnSpec], Field(min_length=1), unique_by(lambda column: column.name)]]
    outputs: Json[Annotated[list[TensorOutput | ColumnOutput], Field(max_length=1)]]
    params: None = None


class PyfuncEnv(Shape):
    conda: Literal["conda.yaml"]
    virtualenv: Literal["python_env.yaml"]


class PyfuncFlavor(Shape):
    loader_module: Literal["mlflow.sklearn"]
    model_path: Literal[SKOPS_FILE]
    predict_fn: Literal["predict"]
    python_version: Version | None = None
    env: PyfuncEnv | None = None


class SklearnFlavor(Shape):
    pickled_model: Literal[SKOPS_FILE]
    serialization_format: Literal["skops"]
    sklearn_version: Version
    code: None = None  # MLflow puts a model's `code` directory on sys.path at load
    skops_trusted_types: Annotated[list[StrictStr], AfterValidator(_only_trusted)] | None = None


class Flavors(Shape):
    python_function: PyfuncFlavor
    sklearn: SklearnFlavor


class ExampleInfo(Shape):
    artifact_path: Literal["input_example.json"]
    pandas_orient: Literal["split"]
    serving_input_path: Literal["serving_input_example.json"]
    type: Literal["dataframe"]


class MLmodel(Shape):
    flavors: Flavors
    mlflow_version: Version
    artifact_path: pattern(r"[A-Za-z0-9_.:/@%+=-]+", 1024) | None = None  # where the run stored it: a URI
    run_id: Hex32 | None = None
    model_id: pattern(r"m-[0-9a-f]{32}") | None = None
    model_uuid: pattern(r"(?:m-)?[0-9a-f]{32}") | None = None
    model_size_bytes: Annotated[StrictInt, Field(ge=0)] | None = None
    utc_time_created: pattern(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?") | None = None
    databricks_runtime: pattern(r"[0-9A-Za-z._-]+") | None = None  # written when logged on a Databricks runtime
    signature: Signature | None = None
    is_signature_from_type_hint: StrictBool | None = None
    type_hint_from_example: StrictBool | None = None
    saved_input_example_info: ExampleInfo | None = None
    prompts: None = None


# --- the environment files --------------------------------------------------------------------------------------

class PipSection(Shape):
    pip: Annotated[list[LockedRequirement], Field(min_length=1), unique_by(canonicalize_name)]


class CondaEnv(Shape):
    name: Literal["mlflow-env"]
    channels: tuple[Literal["conda-forge"]]
    dependencies: tuple[pattern(r"python=3\.[0-9]{1,2}\.[0-9]{1,2}"), pattern(r"pip(?:<=[0-9][0-9a-z.]{0,15})?"),
                        PipSection]


class PythonEnv(Shape):
    python: pattern(r"3\.[0-9]{1,2}\.[0-9]{1,2}")
    build_dependencies: Annotated[list[pattern(r"(?:pip|setuptools|wheel)(?:==[0-9][0-9a-z.]{0,15})?")],
                                  unique_by(lambda tool: tool.split("=")[0])]
    dependencies: tuple[Literal["-r requirements.txt"]]


class RegisteredModelMeta(Shape):
    model_name: RegisteredName
    model_version: pattern(r"[1-9][0-9]{0,8}")


# --- the input examples -----------------------------------------------------------------------------------------

Cell = Annotated[StrictStr, StringConstraints(max_length=64)] | StrictFloat | None  # NaN: MLflow's missing value


class ExampleFrame(Shape):
    """A pandas split-orient frame of the feature columns and exactly one row (training.anonymous_example)."""

    columns: Features
    data: tuple[list[Cell]]

    @model_validator(mode="after")
    def _a_value_per_column(self) -> ExampleFrame:
        if len(self.data[0]) != len(self.columns):
            raise ValueError(f"its row has {len(self.data[0])} values for {len(self.columns)} columns")
        return self


class ServingExample(Shape):
    dataframe_split: ExampleFrame
