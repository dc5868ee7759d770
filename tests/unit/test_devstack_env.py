"""The dev stack honours the endpoints a user chose, not those an earlier stack's
env file exported into the shell, and never spends real money unless asked."""

from __future__ import annotations

import pytest

from devstack.stack import ENV_FILE_MARK, StackError, chosen_endpoints

SOURCED = {
    ENV_FILE_MARK: "/repo/.devstack/env",
    "GEMINI_API_KEY": "local-stub-key",
    "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:40001",
    "SHEETS_API_URL": "http://127.0.0.1:40002",
    "SPREADSHEET_ID": "local-sheet",
}


def test_a_shell_that_sourced_an_env_file_gets_a_fresh_stack() -> None:
    endpoints = chosen_endpoints(SOURCED)
    assert endpoints.chosen == {}
    assert not endpoints.real_gemini
    assert endpoints.notes == [
        "ignoring GEMINI_API_KEY, GOOGLE_GEMINI_BASE_URL, SHEETS_API_URL, SPREADSHEET_ID from "
        "/repo/.devstack/env (an earlier stack's env file this shell sourced)"
    ]


def test_a_real_key_in_the_shell_is_not_used_without_asking() -> None:
    endpoints = chosen_endpoints({"GEMINI_API_KEY": "AIza-real"})
    assert endpoints.chosen == {}
    assert not endpoints.real_gemini
    assert "not used" in endpoints.notes[0] and "USE_REAL_GEMINI=1" in endpoints.notes[0]


def test_asking_for_real_gemini_uses_the_key_and_its_base_url() -> None:
    environ = {
        "GEMINI_API_KEY": "AIza-real",
        "GOOGLE_GEMINI_BASE_URL": "https://proxy.example",
        "USE_REAL_GEMINI": "1",
    }
    endpoints = chosen_endpoints(environ)
    assert endpoints.real_gemini
    assert endpoints.chosen == {
        "GEMINI_API_KEY": "AIza-real",
        "GOOGLE_GEMINI_BASE_URL": "https://proxy.example",
    }
    with pytest.raises(StackError, match="needs GEMINI_API_KEY"):
        chosen_endpoints({"USE_REAL_GEMINI": "1"})


def test_an_endpoint_the_user_chose_is_kept() -> None:
    environ = {"SHEETS_API_URL": "http://127.0.0.1:9999", "SPREADSHEET_ID": "mine"}
    assert chosen_endpoints(environ).chosen == environ
