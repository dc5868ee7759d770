"""The caller's daily caps: a reservation before anything is recorded, or a refusal."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from shared.config.settings import Settings
from shared.contracts.answers import Budget
from shared.services.ports import BudgetLedger, Fence
from shared.services.views import budget_view


@dataclass(frozen=True)
class OverBudget:
    """The caller's daily caps leave no room for the request; nothing was recorded."""

    budget: Budget
    message: str


def reserve(
    ledger: BudgetLedger,
    settings: Settings,
    caller: str,
    day: str,
    key: str,
    images: int,
    cost: Decimal,
    fence: Fence | None = None,
) -> tuple[bool, Budget]:
    """Reserve ``images`` at ``cost`` on the caller's ``day`` under ``key`` (once: a
    retry reserves nothing more) unless a cap would be passed; whether it was, and
    the day as the answer shows it."""
    ok, before = ledger.reserve(
        caller, day, key, images, cost, settings.daily_image_cap, settings.daily_cost_cap_usd, fence
    )
    return ok, budget_view(settings, day, before, images, cost)
