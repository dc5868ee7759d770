"""A1-notation helpers for the sheet adapter."""

from __future__ import annotations


def column_letter(index: int) -> str:
    """1 -> A, 27 -> AA."""
    letters = ""
    while index > 0:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def quote_title(title: str) -> str:
    """A worksheet title as it must appear before ``!`` in a range."""
    return "'" + title.replace("'", "''") + "'"


def unquote_title(quoted: str) -> str:
    """The worksheet title of a ``quote_title`` result (or of a bare title)."""
    if len(quoted) >= 2 and quoted.startswith("'") and quoted.endswith("'"):
        return quoted[1:-1].replace("''", "'")
    return quoted


def literal_text(value: str) -> str:
    """Text that USER_ENTERED keeps as text: a leading apostrophe is never shown
    and stops ``=``, ``+``, ``-``, ``@`` or digits from being interpreted."""
    return "'" + value
