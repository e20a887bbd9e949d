"""Reading text files (plain or inside a zip) with errors that name the file and line."""

from __future__ import annotations

import zipfile
from pathlib import Path

from t2diff.data.errors import DataError


def read_bytes(path: Path, member: str | None = None) -> bytes:
    """Bytes of ``path``, or of the zip member whose name ends with ``member`` when path is a .zip."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if member and n.endswith(member)]
            if not names:
                raise DataError(f"{path}: archive has no member named {member!r} (members: {zf.namelist()[:10]})")
            return zf.read(names[0])
    return path.read_bytes()


def decode(data: bytes, path: object, encoding: str) -> str:
    """Decode, or fail naming the line and byte that is not valid in ``encoding``."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path} line {line}: byte 0x{data[e.start]:02x} is not valid {encoding} "
            f"(pass the file's real encoding, e.g. --encoding latin-1)"
        ) from None


def split_lines(text: str, path: object) -> list[str]:
    """Non-blank lines; an empty file is an error."""
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise DataError(f"{path}: file is empty")
    return lines
