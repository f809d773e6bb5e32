"""Plots for asset metadata and MLflow: rendered headless to PNG, shown inline in the Dagster UI's markdown."""

from __future__ import annotations

import base64
import io


def _pyplot():
    """matplotlib, headless (no display on Databricks drivers or CI); loaded at the first plot, not with the code
    location."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(width: float, height: float):
    return _pyplot().subplots(figsize=(width, height))


def to_png(fig, dpi: int = 80) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    _pyplot().close(fig)
    return buffer.getvalue()


def inline_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
