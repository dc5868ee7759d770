"""Zip the functions' deployable files into ``OUT_DIR/function-source-<sha256>.zip``.

The deployable files are main.py, requirements.txt and everything under
functions/ and shared/ but Python caches: the same list as Terraform's own
archive (``local.source_patterns`` in storage.tf) and as what .gcloudignore lets
through; tests/unit/test_infra.py checks all three agree. The zip is
reproducible (sorted entries, fixed timestamps and modes), so its hash, and the
object name Terraform gives it, change exactly when the code does. Prints the
archive's path.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

PATTERNS = ("main.py", "requirements.txt", "functions/**", "shared/**")
SKIPPED = "__pycache__"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
REPO = Path(__file__).resolve().parents[3]


def deployable_files(repo: Path = REPO) -> list[str]:
    """Repository-relative POSIX paths of the files to deploy, sorted."""
    found: set[str] = set()
    for pattern in PATTERNS:
        if pattern.endswith("/**"):
            paths = list((repo / pattern.removesuffix("/**")).rglob("*"))
        else:
            paths = list(repo.glob(pattern))
        for path in paths:
            rel = path.relative_to(repo).as_posix()
            if path.is_file() and SKIPPED not in rel:
                found.add(rel)
    return sorted(found)


def build_zip(repo: Path, files: list[str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (repo / name).read_bytes())
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument("--out-dir", type=Path, default=Path("dist"))
    parser.add_argument("--list", action="store_true", help="print the files, write nothing")
    args = parser.parse_args(argv)

    files = deployable_files(args.repo)
    if "main.py" not in files:
        print(f"no main.py under {args.repo}", file=sys.stderr)
        return 1
    if args.list:
        print("\n".join(files))
        return 0
    data = build_zip(args.repo, files)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"function-source-{hashlib.sha256(data).hexdigest()}.zip"
    path.write_bytes(data)
    print(path.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
