"""Errors raised on bad input data. Every message names the file, and where it can the line and field."""


class DataError(ValueError):
    """Malformed, missing or inconsistent input data."""


def where(path: object, line: int | None = None, field: str | None = None, row: int | None = None) -> str:
    """'file', 'file line 7' or 'file line 7, field MovieID' for error messages (lines are 1-based; ``row``,
    1-based too, is for files without lines, e.g. 'file.parquet row 3, field ts')."""
    s = str(path)
    if line is not None:
        s += f" line {line}"
    elif row is not None:
        s += f" row {row}"
    if field is not None:
        s += f", field {field}"
    return s
