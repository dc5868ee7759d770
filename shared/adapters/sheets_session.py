"""HTTP session for gspread that can address a Sheets endpoint other than Google's.

gspread builds its URLs from module constants imported by name, so patching them
redirects nothing; the session is the one place every request passes through.
"""

from __future__ import annotations

from typing import Any

from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession

GOOGLE_SHEETS_URL = "https://sheets.googleapis.com"


class SheetsSession(AuthorizedSession):
    """An ``AuthorizedSession`` that sends Sheets API calls to ``base_url``."""

    def __init__(self, credentials: Credentials, base_url: str = GOOGLE_SHEETS_URL) -> None:
        super().__init__(credentials)
        self.base_url = base_url.rstrip("/")

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if (
            self.base_url != GOOGLE_SHEETS_URL
            and isinstance(url, str)
            and url.startswith(GOOGLE_SHEETS_URL)
        ):
            url = self.base_url + url[len(GOOGLE_SHEETS_URL) :]
        return super().request(method, url, *args, **kwargs)
