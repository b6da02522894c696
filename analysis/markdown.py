"""Render a DataFrame as a GitHub-flavoured Markdown table."""

from __future__ import annotations

import pandas as pd


def _cell(value: object) -> str:
    """One cell's text: floats to 4 significant digits, missing values empty."""
    if value is None or (pd.api.types.is_float(value) and pd.isna(value)):
        return ""
    return f"{value:.4g}" if pd.api.types.is_float(value) else str(value).replace("|", "\\|")


def to_markdown(table: pd.DataFrame) -> str:
    """The table as Markdown: a header row, a separator, then one line per row (no index)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)
