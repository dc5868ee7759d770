"""Check, before deploying, that the configured image model is served and priced.

    python -m tools.preflight [--tfvars FILE] [--model NAME]
                              [--backend gemini_api|vertex] [--project P] [--location L]

With a Terraform variables file (``--tfvars``; by default
infra/terraform/terraform.tfvars when it exists) it checks what that deployment
sets (``models.gemini_model``, ``models.gemini_backend``, ``models.model_catalog``,
``models.vertex_location``, ``project_id``), not the shell's environment.

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
from pathlib import Path
from typing import Any

from shared.adapters.gemini import Backend, GeminiModelDirectory
from shared.config.settings import Settings
from shared.domain.catalog import load_catalog
from shared.domain.errors import ConfigError, TransientError

LOOKUP_TIMEOUT_S = 20.0
TFVARS = Path(__file__).resolve().parents[1] / "infra" / "terraform" / "terraform.tfvars"
# The setting each Terraform variable (attribute) sets.
FROM_TFVARS = {
    ("models", "gemini_model"): "GEMINI_MODEL",
    ("models", "gemini_backend"): "GEMINI_BACKEND",
    ("models", "model_catalog"): "MODEL_CATALOG",
    ("models", "vertex_location"): "VERTEX_LOCATION",
    ("project_id",): "GOOGLE_CLOUD_PROJECT",
}


def deployment_settings(path: Path) -> dict[str, str]:
    """The model settings a Terraform variables file sets, by setting name."""
    import hcl2

    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    values: dict[str, Any] = hcl2.loads(path.read_text(), serialization_options=options)
    found: dict[str, str] = {}
    for keys, setting in FROM_TFVARS.items():
        value: Any = values
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            found[setting] = str(value)
    return found


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    env = dict(os.environ if environ is None else environ)
    tfvars, rest = _tfvars_argument(argv, TFVARS if environ is None and TFVARS.exists() else None)
    if tfvars is not None:
        try:
            deployed = deployment_settings(tfvars)
        except Exception as exc:  # unreadable, or not HCL: the file's fault, said plainly
            print(f"tfvars: cannot read {tfvars}: {type(exc).__name__}: {exc}")
            return 2
        for name, value in deployed.items():
            if env.get(name) and env[name] != value:
                print(
                    f"note: {name} in the environment ({env[name]!r}) is not what {tfvars} deploys"
                )
        env |= deployed
        print(f"checking the deployment of {tfvars}")
    parser = argparse.ArgumentParser(prog="python -m tools.preflight", description=__doc__)
    parser.add_argument("--tfvars", help="Terraform variables file of the deployment to check")
    default_model = Settings.model_fields["gemini_model"].default
    parser.add_argument("--model", default=env.get("GEMINI_MODEL", default_model))
    parser.add_argument(
        "--backend",
        choices=["gemini_api", "vertex"],
        default=env.get("GEMINI_BACKEND", "gemini_api"),
    )
    parser.add_argument("--project", default=env.get("GOOGLE_CLOUD_PROJECT", ""))
    parser.add_argument("--location", default=env.get("VERTEX_LOCATION", "global"))
    args = parser.parse_args(rest)

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


def _tfvars_argument(argv: list[str] | None, default: Path | None) -> tuple[Path | None, list[str]]:
    """``--tfvars FILE`` (empty: none) taken out of ``argv``, which argparse then reads."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--tfvars", default=None)
    known, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if known.tfvars is None:
        return default, rest
    return (Path(known.tfvars) if known.tfvars else None), rest


if __name__ == "__main__":
    sys.exit(main())
