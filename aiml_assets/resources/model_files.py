"""What each file of a published MLflow model directory may hold: what MLflow 3.17 writes for a propensity model of
ours (`mlflow_file_shapes`), and nothing a customer record could ride in.

requirements.txt holds only `name==version` pins of the project's lock, one a line; the YAML and JSON files follow
their shapes; model.skops constructs nothing beyond skops's defaults and `safe_artifact.TRUSTED_SKOPS_TYPES`.
A refusal names the file, the line or key and the rule, never the content.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import yaml
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from aiml_assets.resources.safe_artifact import (SKOPS_FILE, TRUSTED_SKOPS_TYPES, UntrustedModel, describe_types,
                                              untrusted_skops_types)
from aiml_assets.resources.mlflow_file_shapes import (PIN, CondaEnv, ExampleFrame, MLmodel, PythonEnv,
                                                      RegisteredModelMeta, ServingExample, Shape, locked)

MAX_TEXT_BYTES = 1024 * 1024  # every model file but the serialized model itself
MAX_SERIALIZED_MODEL_BYTES = 512 * 1024 * 1024
_SHOWN_CHARS = 40  # of a key or a location named in a refusal: the content itself is never repeated


def _short(text) -> str:
    text = str(text)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def shape_problem(exc: ValidationError, document: str) -> str:
    """What is wrong with a document, by location and rule, never repeating its values."""
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    where = "; ".join(f"{'.'.join(_short(part) for part in e['loc']) or 'the document'}: "
                      f"{e['msg'].removeprefix('Value error, ')}" for e in errors[:3])
    return f"is not {document} ({where}{'; ...' if len(errors) > 3 else ''})"


def _shaped(shape: type[Shape], parse: Callable[[str], object], document: str) -> Callable[[bytes], str | None]:
    """A check of a file's bytes: parsed by `parse` (json.loads or yaml.safe_load), then validated as `shape`."""
    def problem(content: bytes) -> str | None:
        try:
            shape.model_validate(parse(content.decode("utf-8")))
        except ValidationError as exc:
            return shape_problem(exc, document)
        except (UnicodeDecodeError, ValueError, yaml.YAMLError):  # json's errors are ValueErrors
            return f"is not {document} (not UTF-8 {'JSON' if parse is json.loads else 'YAML'})"
        return None
    return problem


def requirements_problem(content: bytes) -> str | None:
    """requirements.txt as MLflow writes ours: one locked `name==version` a line, each package once."""
    try:
        lines = content.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        return "is not pip requirements (not UTF-8)"
    seen = set()
    for number, line in enumerate(lines, start=1):
        try:
            name = canonicalize_name(PIN.fullmatch(locked(line))["name"])
        except ValueError as exc:
            return f"line {number} is {exc}"
        if name in seen:
            return f"line {number} repeats a package"
        seen.add(name)
    return None if lines else "is not pip requirements (empty)"


def skops_problem(content: bytes) -> str | None:
    if not content.startswith(b"PK\x03\x04"):
        return "is not a skops archive"
    try:
        extra = untrusted_skops_types(content)
    except UntrustedModel as exc:
        return f"is {exc}"
    return (f"would construct {describe_types(extra)}; a model of ours may construct only skops's defaults and "
            f"{', '.join(TRUSTED_SKOPS_TYPES)}") if extra else None


@dataclass(frozen=True)
class ModelFile:
    """A file MLflow writes into a model directory: what is wrong with given bytes for it, and how big it may be."""

    problem: Callable[[bytes], str | None]
    max_bytes: int = MAX_TEXT_BYTES


_ENVIRONMENT_FILES = {
    "MLmodel": ModelFile(_shaped(MLmodel, yaml.safe_load, "an MLmodel of a skops-serialized model of ours")),
    "conda.yaml": ModelFile(_shaped(CondaEnv, yaml.safe_load, "MLflow's conda.yaml of locked packages")),
    "python_env.yaml": ModelFile(_shaped(PythonEnv, yaml.safe_load, "MLflow's python_env.yaml")),
    "requirements.txt": ModelFile(requirements_problem),
}
# The allow-list: what MLflow 3.17 writes for our scikit-learn model saved as skops (training.py asks for skops
# everywhere: a pickle runs code when it is loaded, so `model.pkl` is not publishable). `registered_model_meta` is
# added when the directory is downloaded from `models:/<name>/<version>`; on a Databricks runtime MLflow also copies
# the environment files into `metadata/` (for Unity Catalog sharing).
MLFLOW_MODEL_FILES = {
    **_ENVIRONMENT_FILES,
    **{f"metadata/{name}": rule for name, rule in _ENVIRONMENT_FILES.items()},
    "registered_model_meta": ModelFile(_shaped(RegisteredModelMeta, yaml.safe_load, "MLflow's registered_model_meta")),
    "input_example.json": ModelFile(_shaped(ExampleFrame, json.loads,
                                            "an input example of the feature columns and one row")),
    "serving_input_example.json": ModelFile(_shaped(ServingExample, json.loads,
                                                    "a serving input example of the feature columns and one row")),
    SKOPS_FILE: ModelFile(skops_problem, MAX_SERIALIZED_MODEL_BYTES),
}
SERIALIZED_MODEL_FILES = (SKOPS_FILE,)
