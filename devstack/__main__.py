"""``python -m devstack up|down|demo|env`` (what the Makefile targets call)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from devstack.stack import REPO, Stack, StackConfig, StackError, read_env_file, require_tools

STATE_DIR = REPO / ".devstack"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    parser.add_argument("command", choices=["up", "down", "demo", "env"])
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    parser.add_argument("--output", type=Path, default=REPO / "demo-output")
    parser.add_argument("--scenes", type=Path, default=REPO / "examples" / "scenes.csv")
    args = parser.parse_args(argv)

    if args.command == "down":
        stopped = Stack.stop_recorded(args.state_dir)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if args.command == "env":
        for key, value in sorted(read_env_file(args.state_dir).items()):
            print(f"{key}={value}")
        return 0
    try:
        require_tools()
        if args.command == "up":
            stack = Stack(StackConfig(state_dir=args.state_dir))
            env = stack.start()
            from devstack.demo import upload_references

            # The references examples/scenes.csv names (gs://local-images/refs/...).
            upload_references(env)
            print(f"stack is up; Gemini: {stack.gemini_endpoint}")
            print(f"source {args.state_dir / 'env'} to use it from this shell")
            for key in ("API_URL", "SPREADSHEET_ID", "WORKSHEET", "SHEET_CSV"):
                print(f"  {key}={env[key]}")
            return 0
        from devstack.demo import run_demo

        return run_demo(args.state_dir, args.scenes, args.output)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
