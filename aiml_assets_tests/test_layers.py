"""Layers that point one way (issue 16): the import graph of `aiml_assets`, read from its source (every `import` and
`from` at any depth, in functions and `if TYPE_CHECKING:` blocks too), against the order of its layers. A module may
import its own layer and those below it; the offending imports are named by module, line and target."""

from __future__ import annotations

import ast
from pathlib import Path

import aiml_assets

PACKAGE = Path(aiml_assets.__file__).parent
ENTRY_POINTS = frozenset({"definitions", "cli", "local_run"})
LEAF = frozenset({"", "keys", "settings", "sql_identifiers", "provenance", "known_warnings", "plots",
                  "model_inputs"})  # "": __init__
LAYERS = (  # low to high, each a set of top-level modules or packages of aiml_assets
    LEAF,
    {"resources"},
    {"asset_tables", "quality", "quarantine", "audited_write"},  # the data-quality core
    {"sources"}, {"features"}, {"models"}, {"inference"}, {"publication"},
    {"governance"},  # imported by the entry points alone: nothing above it but them
    ENTRY_POINTS,
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
# The local seed, a stand-in for the bank's EDP: it writes its products into the local catalog (resources) by the
# sources' schemas, and no platform code depends on it.
SEED = "edp"
SEED_IMPORTS = LEAF | {"resources", "sources", SEED}


def modules(package: Path) -> dict[str, Path]:
    """Each module of the package by its dotted name within it ("" for the package itself)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(package: Path) -> list[tuple[str, int, str]]:
    """(module, line, imported module) for every import of the package's own modules, by module and line."""
    name, known, found = package.name, modules(package), []

    def own(dotted: str) -> str | None:
        return dotted.removeprefix(name).removeprefix(".") if dotted == name or dotted.startswith(name + ".") else None

    for module, path in sorted(known.items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [own(alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = [name, *module.split(".")] if module else [name]
                    base = base[:len(base) - node.level + (path.name == "__init__.py")]
                    source = own(".".join(base + ([node.module] if node.module else [])))
                else:
                    source = own(node.module or "")
                if source is None:
                    continue
                # `from package import module` imports that module; `from module import name`, the module
                targets = [f"{source}.{a.name}".lstrip(".") if f"{source}.{a.name}".lstrip(".") in known else source
                           for a in node.names]
            else:
                continue
            found += [(module, node.lineno, target) for target in targets if target is not None]
    return sorted(set(found))


def component(module: str) -> str:
    return module.split(".")[0]


def refusal(module: str, target: str) -> str | None:
    """Why `module` must not import `target`, or None if it may."""
    source, imported = component(module), component(target)
    if source == SEED:
        return None if imported in SEED_IMPORTS else "the local seed imports only the leaf, resources and sources"
    if imported == SEED:
        return None if source in ENTRY_POINTS else "only the entry points import the local seed"
    if source not in RANK or imported not in RANK:
        return f"{source if source not in RANK else imported} is in no layer (add it to test_layers.LAYERS)"
    if RANK[imported] > RANK[source]:
        return f"{imported} is a layer above {source or 'the package'}"
    return None


def offending(package: Path) -> list[str]:
    def dotted(module: str) -> str:
        return ".".join(filter(None, (package.name, module)))

    return [f"{dotted(module)} line {line} imports {dotted(target)}: {reason}"
            for module, line, target in imports(package) if (reason := refusal(module, target))]


def test_no_module_imports_against_the_layers():
    assert offending(PACKAGE) == [], "imports against the layers:\n" + "\n".join(offending(PACKAGE))


def test_every_module_is_in_a_layer():
    assert {component(m) for m in modules(PACKAGE)} - set(RANK) - {SEED} == set()


def _package(root: Path, files: dict[str, str]) -> Path:
    package = root / "aiml_assets"
    for name, source in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return package


def test_an_import_against_the_order_is_named_wherever_it_hides(tmp_path):
    package = _package(tmp_path, {
        "__init__.py": "from aiml_assets import known_warnings\n",
        "known_warnings.py": "", "keys.py": "", "quality.py": "import aiml_assets.resources.storage\n",
        "resources/__init__.py": "",
        "resources/storage.py": "from aiml_assets.keys import X\n",
        # the attacks: inside a function, relative, under TYPE_CHECKING, a package's module, the seed both ways
        "resources/audit.py": "from .storage import S\n\ndef f():\n    from aiml_assets.governance import erasure\n",
        "resources/egress.py": "from ..governance.erasure import job\n",
        "sources/__init__.py": "", "sources/edp.py": "from aiml_assets.features import assets\n",
        "features/__init__.py": "", "features/assets.py": "if TYPE_CHECKING:\n    import aiml_assets.models.training\n",
        "models/__init__.py": "", "models/training.py": "from aiml_assets import edp\nimport aiml_assets.sources.edp\n",
        "edp/__init__.py": "", "edp/seed.py": "from aiml_assets.resources.storage import S\n"
                                             "from aiml_assets.features.assets import F\n",
        "governance/__init__.py": "",
        "governance/erasure.py": "from aiml_assets.models.training import T\n"
                                 "from aiml_assets.governance import erasure\n",
        "definitions.py": "from aiml_assets.governance.erasure import job\nfrom aiml_assets import edp\n",
    })

    found = offending(package)

    assert found == [
        "aiml_assets.edp.seed line 2 imports aiml_assets.features.assets: the local seed imports only the leaf, "
        "resources and sources",
        "aiml_assets.features.assets line 2 imports aiml_assets.models.training: models is a layer above features",
        "aiml_assets.models.training line 1 imports aiml_assets.edp: only the entry points import the local seed",
        "aiml_assets.resources.audit line 4 imports aiml_assets.governance.erasure: governance is a layer above "
        "resources",
        "aiml_assets.resources.egress line 1 imports aiml_assets.governance.erasure: governance is a layer above "
        "resources",
        "aiml_assets.sources.edp line 1 imports aiml_assets.features.assets: features is a layer above sources",
    ]
