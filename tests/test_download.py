"""Downloads: verified against size and sha256 before use; tested on a local server, never the network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedsynth.common.config.sections import DataConfig
from fedsynth.common.data import download
from fedsynth.common.data.download import RemoteArchive, fetch_archive, fetch_movielens
from fedsynth.common.data.loaders import load_table
from fedsynth.common.errors import DownloadError


def make_archive(folder: Path) -> tuple[Path, RemoteArchive]:
    """A tiny ml-100k.zip with a u.data inside, and its true size and sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ml-100k.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("ml-100k/u.data", "1\t10\t5\t881250949\n2\t10\t4\t881250951\n")
    data = path.read_bytes()
    return path, RemoteArchive("ml-100k.zip", len(data), hashlib.sha256(data).hexdigest(), "ml-100k")


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path / 'served'``; yields (base URL, folder)."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None  # type: ignore[method-assign,assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", served
    finally:
        server.shutdown()
        server.server_close()


def test_download_over_http_verifies_and_unpacks(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    url, served = file_server
    _, archive = make_archive(served)
    cache = tmp_path / "cache"

    folder = fetch_archive(archive, cache, url)

    assert (folder / "u.data").is_file()
    assert (cache / "ml-100k.zip").is_file()


def test_cached_archive_is_reused_without_network(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    url, served = file_server
    _, archive = make_archive(served)
    cache = tmp_path / "cache"
    fetch_archive(archive, cache, url)

    folder = fetch_archive(archive, cache, "http://127.0.0.1:9/unreachable/")

    assert (folder / "u.data").is_file()


def test_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    url, served = file_server
    _, archive = make_archive(served)
    wrong = RemoteArchive(archive.filename, archive.size, "0" * 64, archive.folder)
    cache = tmp_path / "cache"

    with pytest.raises(DownloadError, match="sha256"):
        fetch_archive(wrong, cache, url)

    assert not (cache / "ml-100k.zip").exists()
    assert not (cache / "ml-100k").exists()
    assert not list(cache.glob("*.part"))


def test_size_mismatch_is_refused(tmp_path: Path, file_server: tuple[str, Path]) -> None:
    url, served = file_server
    _, archive = make_archive(served)

    with pytest.raises(DownloadError, match="size"):
        fetch_archive(RemoteArchive(archive.filename, archive.size + 1, archive.sha256, archive.folder), tmp_path, url)


def test_file_url_and_unreachable_server(tmp_path: Path) -> None:
    _, archive = make_archive(tmp_path / "mirror")

    folder = fetch_archive(archive, tmp_path / "cache", (tmp_path / "mirror").as_uri())
    assert (folder / "u.data").is_file()
    with pytest.raises(DownloadError, match="could not download"):
        fetch_archive(archive, tmp_path / "cache2", "http://127.0.0.1:9/")


def test_movielens_variant_with_mirror_checks_the_published_checksum(tmp_path: Path) -> None:
    make_archive(tmp_path / "mirror")  # a stand-in file: not the real release, so it must be refused

    with pytest.raises(DownloadError, match="size"):
        fetch_movielens("100k", tmp_path / "cache", (tmp_path / "mirror").as_uri())
    with pytest.raises(DownloadError, match="unknown MovieLens --variant"):
        fetch_movielens("5m", tmp_path / "cache")


def test_load_table_downloads_a_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, archive = make_archive(tmp_path / "mirror")
    monkeypatch.setitem(download.MOVIELENS_ARCHIVES, "100k", archive)

    table = load_table(
        DataConfig(
            dataset="movielens", variant="100k", cache_dir=tmp_path / "cache", mirror=(tmp_path / "mirror").as_uri()
        )
    )

    assert table.frame["user"].tolist() == [1, 2]
