"""Reading the text files a user hands to dsport (YAML configs, config.json,
conformance reports): a file that cannot be read, or is binary, is an error
naming the file and what was expected there, never a UnicodeDecodeError."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def read_text(path: Path, expected: str, label: str | None = None, error: type[ConfigError] = ConfigError) -> str:
    """The file's text. ``expected`` says what it should hold ("a YAML mapping");
    ``label`` names it in messages (default: the path)."""
    label = label or str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{label}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{label}: not a text file (byte {e.start} is not UTF-8): expected {expected}") from None
    if "\x00" in text:
        raise error(f"{label}: contains NUL bytes (a binary file?): expected {expected}")
    return text
