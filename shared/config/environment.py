"""The settings of this instance, read once from the environment and checked
(the model against the catalog, the function's timeout against its longest path)."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import ValidationError

from shared.config.budgets import check_function_timeout
from shared.config.settings import Settings, check_model_settings
from shared.domain.errors import ConfigError


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the environment once per instance."""
    try:
        settings = Settings.from_env(os.environ)
    except ValidationError as exc:
        names = ", ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()} ({err['msg']})" for err in exc.errors()
        )
        raise ConfigError(f"invalid or missing setting(s): {names}") from exc
    check_model_settings(settings)
    # functions-framework sets FUNCTION_TARGET to the entry point it serves.
    check_function_timeout(settings, os.environ.get("FUNCTION_TARGET", ""))
    return settings
