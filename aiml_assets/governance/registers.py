"""Governance registers: YAML files under deployments/governance/, one key holding a list of entries, each a strict
pydantic model with a unique `id`. Read at every use, so that a removed entry stops what it allowed at once."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Entry = TypeVar("Entry", bound=BaseModel)


class RegisterError(ValueError):
    """A register that cannot be read or is malformed: it allows nothing."""


def load_entries(path: Path, key: str, model: type[Entry], what: str) -> list[Entry]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegisterError(f"{path}: cannot read the {what} register: {exc}") from exc
    if not isinstance(raw, dict) or list(raw) != [key] or not isinstance(raw[key], list):
        raise RegisterError(f"{path}: expected one key, {key}, holding a list ([] for none)")
    entries: list[Entry] = []
    for number, item in enumerate(raw[key], 1):
        try:
            entries.append(model.model_validate(item))
        except ValidationError as exc:  # named by its id, which people know it by
            name = (item.get("id") if isinstance(item, dict) else None) or f"number {number}"
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(entry)'}: {e['msg']} (got {e.get('input')!r})"
                                 for e in exc.errors())
            raise RegisterError(f"{path}: {what} {name} is invalid: {problems}") from exc
        if [entry.id for entry in entries].count(entries[-1].id) > 1:
            raise RegisterError(f"{path}: {what} {entries[-1].id} is listed twice; ids must be unique")
    return entries
