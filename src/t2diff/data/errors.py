"""Errors raised on bad input data. Every message names the file, and where it can the line and field."""


class DataError(ValueError):
    """Malformed, missing or inconsistent input data."""


def where(path: object, line: int | None = None, field: str | None = None) -> str:
    """'file', 'file line 7' or 'file line 7, field MovieID' for error messages (lines are 1-based)."""
    s = str(path)
    if line is not None:
        s += f" line {line}"
    if field is not None:
        s += f", field {field}"
    return s
