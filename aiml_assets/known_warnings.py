"""The Dagster warnings this code location knows and accepts, filtered in this one place, each with its reason.

Each entry silences one warning only: its category and the start of its exact message (the feature it names).
Any other warning, including a new Preview/Beta/Supersession warning about a feature we have not reviewed, still
shows. When a Dagster upgrade rewords one of these, it shows again: review it, then update its entry here.

`aiml_assets/__init__.py` installs the filters, so they apply wherever the code location is imported: `aiml`
commands, `dg dev` / `dagster-webserver` code servers, `dg check defs`, run workers and the re-import on a
Databricks cluster. As the `warnings` documentation recommends for an application's own defaults, they are not
installed when the interpreter was given warning options (`python -W ...` or `PYTHONWARNINGS`), so those always
win, e.g. `PYTHONWARNINGS=default` shows everything again.
"""

from __future__ import annotations

import re
import sys
import warnings

from dagster_shared.utils.warnings import BetaWarning, PreviewWarning, SupersessionWarning

# (category, start of the message, why the project uses the feature anyway)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (BetaWarning, "Function `multi_observable_source_asset` is currently in beta",
     "sources/edp.py: the four EDP products are external assets we only observe, one subsettable observation."),
    (BetaWarning, "Parameter `include_sources` of function `AssetSelection.groups` is currently in beta",
     "definitions.py: the main job observes the EDP sources in the same run as the features it builds."),
    (BetaWarning, "Parameter `backfill_policy` of function `asset` is currently in beta",
     "features/assets.py: lab assets backfill any range of snapshots in one run (single-run policy)."),
    (PreviewWarning, "Specifying a partitions_def on an AssetCheckSpec is currently in preview",
     "quality.py, models/ and inference/: blocking checks judge the same partition their asset just wrote."),
    (SupersessionWarning, "StepLauncher is superseded and its usage is discouraged",
     "resources/step_launcher.py: the mechanism the design card names for lab/uat/prod on Databricks, still "
     "shipped and supported (DESIGN.md); warned at run time there (launcher start), not at load."),
)


def install() -> None:
    """Ignore exactly the known warnings (idempotent); leaves explicit -W / PYTHONWARNINGS choices alone."""
    if sys.warnoptions:
        return
    for category, message, _reason in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
