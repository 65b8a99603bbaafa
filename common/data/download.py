"""Download MovieLens releases by name into a cache, verifying size and sha256 before use.

Sizes and checksums are those published for the GroupLens files (cross-checked with
TensorFlow Datasets' checksum list). A file that does not match is deleted and the
download is an error; nothing unverified is ever unpacked.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from fedsynth.common.errors import DownloadError

GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteArchive:
    """A zip file to download: its name, size in bytes, sha256 and the folder it unpacks to."""

    filename: str
    size: int
    sha256: str
    folder: str


MOVIELENS_ARCHIVES: dict[str, RemoteArchive] = {
    "100k": RemoteArchive(
        "ml-100k.zip", 4924029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229", "ml-100k"
    ),
    "1m": RemoteArchive(
        "ml-1m.zip", 5917549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20", "ml-1m"
    ),
    "latest-small": RemoteArchive(
        "ml-latest-small.zip",
        978202,
        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        "ml-latest-small",
    ),
    "20m": RemoteArchive(
        "ml-20m.zip", 198702078, "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3", "ml-20m"
    ),
}


def default_cache_dir() -> Path:
    """``$FEDSYNTH_CACHE`` or ``$XDG_CACHE_HOME/fedsynth`` or ``~/.cache/fedsynth``."""
    if os.environ.get("FEDSYNTH_CACHE"):
        return Path(os.environ["FEDSYNTH_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "fedsynth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, archive: RemoteArchive) -> None:
    """Raise DownloadError if ``path`` does not have the archive's size and sha256."""
    size = path.stat().st_size
    if size != archive.size:
        raise DownloadError(f"{path}: size {size:,} bytes, expected {archive.size:,} for {archive.filename}.")
    digest = sha256_of(path)
    if digest != archive.sha256:
        raise DownloadError(f"{path}: sha256 {digest}, expected {archive.sha256} for {archive.filename}.")


def fetch_archive(archive: RemoteArchive, cache_dir: Path, base_url: str) -> Path:
    """Download (if not cached and verified) and unpack ``archive``; return the unpacked folder.

    ``base_url`` may be ``https://``, ``http://`` or ``file://``. The zip is written to a
    temporary file, verified, then renamed into the cache; the folder is unpacked into a
    temporary directory and renamed, so an interrupted run never leaves a half folder.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / archive.folder
    zip_path = cache_dir / archive.filename
    if target.is_dir() and (target / ".verified").is_file():
        return target
    if zip_path.is_file():
        try:
            verify(zip_path, archive)
        except DownloadError:
            zip_path.unlink()
    if not zip_path.is_file():
        _download(base_url.rstrip("/") + "/" + archive.filename, zip_path, archive)
    with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
        try:
            with zipfile.ZipFile(zip_path) as bundle:
                bundle.extractall(staging)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{zip_path} is not a valid zip file: {exc}") from exc
        unpacked = Path(staging) / archive.folder
        if not unpacked.is_dir():
            raise DownloadError(f"{zip_path} does not contain the folder {archive.folder}/.")
        (unpacked / ".verified").write_text(archive.sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


def _download(url: str, destination: Path, archive: RemoteArchive) -> None:
    partial = destination.with_suffix(destination.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, _CHUNK)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {url}: {exc}. Check the network, or download the file yourself and pass "
            "--data-path to the unpacked folder."
        ) from exc
    try:
        verify(partial, archive)
    except DownloadError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(destination)


def fetch_movielens(variant: str, cache_dir: Path | None = None, mirror: str | None = None) -> Path:
    """Download MovieLens ``variant`` (100k, 1m, latest-small, 20m) and return its unpacked folder."""
    if variant not in MOVIELENS_ARCHIVES:
        raise DownloadError(f"unknown MovieLens --variant {variant!r}; choose one of {', '.join(MOVIELENS_ARCHIVES)}.")
    return fetch_archive(MOVIELENS_ARCHIVES[variant], cache_dir or default_cache_dir(), mirror or GROUPLENS_BASE_URL)
