"""Check, before deploying, that the configured image model is served and priced.

    python -m tools.preflight [--model NAME] [--backend gemini_api|vertex]
                              [--project P] [--location L]

The same lookup the HTTP function makes before it accepts a batch
(google-genai's ``models.get``), against the endpoint the settings name:
GEMINI_API_KEY (and GOOGLE_GEMINI_BASE_URL, if set) for the Gemini API;
Application Default Credentials, GOOGLE_CLOUD_PROJECT and VERTEX_LOCATION for
Vertex AI. Also checks the model is in the catalog (shared/domain/model_catalog.json
with MODEL_CATALOG merged over it), says when the model is deprecated (its
replacement and shutdown date) and refuses one Google shut down. Exit status 0:
ready (perhaps with a warning); 1: the model is not usable (the reason is
printed); 2: the check could not be made.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime

from shared.adapters.gemini import Backend, GeminiModelDirectory
from shared.config.settings import Settings
from shared.domain.catalog import load_catalog
from shared.domain.errors import ConfigError, TransientError

LOOKUP_TIMEOUT_S = 20.0


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    parser = argparse.ArgumentParser(prog="python -m tools.preflight", description=__doc__)
    default_model = Settings.model_fields["gemini_model"].default
    parser.add_argument("--model", default=env.get("GEMINI_MODEL", default_model))
    parser.add_argument(
        "--backend",
        choices=["gemini_api", "vertex"],
        default=env.get("GEMINI_BACKEND", "gemini_api"),
    )
    parser.add_argument("--project", default=env.get("GOOGLE_CLOUD_PROJECT", ""))
    parser.add_argument("--location", default=env.get("VERTEX_LOCATION", "global"))
    args = parser.parse_args(argv)

    try:
        catalog = load_catalog(env.get("MODEL_CATALOG", ""))
    except ConfigError as exc:
        print(f"catalog: {exc}")
        return 1
    entry = catalog.entry(args.model)
    if entry is None:
        print(
            f"catalog: GEMINI_MODEL {args.model!r} is not in the model catalog; choose one of "
            f"{', '.join(sorted(catalog.models))} or add it with MODEL_CATALOG"
        )
        return 1
    notice = entry.notice(args.model, datetime.now(UTC).date())
    if not entry.served:
        print(f"catalog: {notice}")
        return 1
    if notice:
        print(f"warning: {notice} (GEMINI_MODEL; Terraform models.gemini_model)")
    if args.backend == "vertex":
        if not args.project:
            print("vertex: set GOOGLE_CLOUD_PROJECT or --project")
            return 2
        backend = Backend(
            kind="vertex",
            project=args.project,
            location=args.location,
            base_url=env.get("VERTEX_BASE_URL", ""),
        )
    else:
        if not env.get("GEMINI_API_KEY"):
            print("gemini_api: set GEMINI_API_KEY")
            return 2
        backend = Backend(
            api_key=env["GEMINI_API_KEY"], base_url=env.get("GOOGLE_GEMINI_BASE_URL", "")
        )
    try:
        check = GeminiModelDirectory(backend, LOOKUP_TIMEOUT_S).check(args.model)
    except TransientError as exc:
        print(f"{args.backend}: could not check {args.model}: {exc}")
        return 2
    except Exception as exc:  # no credentials, a bad project: say so, no traceback
        print(f"{args.backend}: could not check {args.model}: {type(exc).__name__}: {exc}")
        return 2
    if not check.available:
        print(f"{args.backend}: {args.model} is not available: {check.reason}")
        return 1
    print(f"{args.backend}: {args.model} is served and in the catalog")
    return 0


if __name__ == "__main__":
    sys.exit(main())
