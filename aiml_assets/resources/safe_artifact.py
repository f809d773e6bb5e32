"""Loading a model of ours without trusting the artifact: the skops types it may construct are fixed here.

skops refuses to construct a type it does not trust, but MLflow's loader trusts whatever the artifact's own MLmodel
lists (`skops_trusted_types`): a forged model.skops that names `subprocess.Popen`, and an MLmodel that lists it,
run it at load. Here the list comes from code only; an artifact that asks for anything else is refused before skops
constructs a single object.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

# What skops does not trust by default in the propensity pipeline (ColumnTransformer + OneHotEncoder +
# HistGradientBoostingClassifier), as `skops.io.get_untrusted_types` reports it for our trained model: the
# predictors holding the fitted trees. Nothing that calls code on construction; add a type only when a model of
# ours needs it and that function says so.
TRUSTED_SKOPS_TYPES = ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",)
SKOPS_FILE = "model.skops"
_SHOWN_TYPES, _SHOWN_CHARS = 10, 120  # how much of an artifact's type list a refusal repeats


class UntrustedModel(ValueError):
    """An artifact asks skops to trust a type outside `TRUSTED_SKOPS_TYPES`, or cannot be read as ours."""


def beyond_trusted(types: Iterable[str]) -> list[str]:
    """The types of `types` that `TRUSTED_SKOPS_TYPES` does not list, sorted."""
    return sorted(set(types) - set(TRUSTED_SKOPS_TYPES))


def describe_types(types: list[str]) -> str:
    shown = [t if len(t) <= _SHOWN_CHARS else t[:_SHOWN_CHARS] + "..." for t in types[:_SHOWN_TYPES]]
    return ", ".join(shown) + (f" and {len(types) - _SHOWN_TYPES} more" if len(types) > _SHOWN_TYPES else "")


def untrusted_skops_types(data: bytes) -> list[str]:
    """The types a serialized model.skops would construct beyond skops's defaults and `TRUSTED_SKOPS_TYPES`.
    Reads the archive's schema only; nothing is constructed."""
    try:
        import skops.io  # loads scikit-learn: where a model is checked or loaded, not with the code location

        return beyond_trusted(skops.io.get_untrusted_types(data=data))
    except Exception as exc:  # skops raises whatever its parser meets: not our archive either way
        raise UntrustedModel(f"not a skops archive skops can audit ({type(exc).__name__})") from None


def load_model(model_dir: Path, model: str):
    """The scikit-learn model of the MLflow model directory `model_dir` (`model` names it in refusals), deserialized
    trusting `TRUSTED_SKOPS_TYPES` only, once its MLmodel and its model.skops are shown to ask for nothing else."""
    model_dir = Path(model_dir)
    try:
        flavor = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8"))["flavors"]["sklearn"]
        asked = list(flavor.get("skops_trusted_types") or [])
        ours = (flavor.get("serialization_format"), flavor.get("pickled_model")) == ("skops", SKOPS_FILE)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        raise UntrustedModel(f"{model}: refused: its MLmodel has no readable sklearn flavor") from None
    if not ours:
        raise UntrustedModel(f"{model}: refused: only the skops serialization ({SKOPS_FILE}) is loaded")
    if extra := beyond_trusted(asked):
        raise UntrustedModel(f"{model}: refused: its MLmodel asks to trust {describe_types(extra)}; "
                             f"a model of ours is loaded trusting only {', '.join(TRUSTED_SKOPS_TYPES)}")
    data = (model_dir / SKOPS_FILE).read_bytes()
    try:
        extra = untrusted_skops_types(data)
    except UntrustedModel as exc:
        raise UntrustedModel(f"{model}: refused: {SKOPS_FILE} is {exc}") from None
    if extra:
        raise UntrustedModel(f"{model}: refused: its {SKOPS_FILE} would construct {describe_types(extra)}; "
                             f"a model of ours is loaded trusting only {', '.join(TRUSTED_SKOPS_TYPES)}")
    import skops.io

    return skops.io.loads(data, trusted=list(TRUSTED_SKOPS_TYPES))
