"""deepfn.data.multi30k(download=True) against a local HTTP server serving the committed sample.

The sample's digests differ from the published files', so most tests pass their own table
(``digests=``); one test checks that the fixed table of the real files is the default.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import socket
from pathlib import Path

import pytest

from deepfn.data import multi30k
from deepfn.data._download import data_home
from tests.data.local_server import QuietHandler, serving

# deepfn.data.multi30k is the function; its module holds the constants.
M30K = importlib.import_module("deepfn.data.multi30k")
SAMPLE = Path(__file__).resolve().parent / "multi30k_sample"
SAMPLE_SHA256 = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in SAMPLE.glob("*.gz")}
VAL = ["val.de.gz", "val.en.gz"]


class _Truncating(QuietHandler):
    """Promises 1,000 bytes, sends 10, closes: a connection cut mid-transfer."""

    def do_GET(self):
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"x" * 8)
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    with serving(SAMPLE) as running:
        yield running


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_fetches_verifies_and_reads(server, tmp_path):
    srv, url = server
    root = tmp_path / "new" / "multi30k"
    pairs = multi30k(root, "val", download=True, base_url=url, digests=SAMPLE_SHA256)
    assert pairs == multi30k(SAMPLE, "val")
    assert sorted(srv.requests) == ["/val.de.gz", "/val.en.gz"]
    assert _leftovers(root) == VAL
    for name in VAL:
        assert (root / name).read_bytes() == (SAMPLE / name).read_bytes()
    # present and verified: nothing fetched again
    assert multi30k(root, "val", download=True, base_url=url, digests=SAMPLE_SHA256) == pairs
    assert len(srv.requests) == 2


def test_only_missing_files_are_fetched(server, tmp_path):
    srv, url = server
    (tmp_path / "train.en.gz").write_bytes((SAMPLE / "train.en.gz").read_bytes())
    multi30k(tmp_path, "train", download=True, base_url=url.rstrip("/"), digests=SAMPLE_SHA256)
    assert srv.requests == ["/train.de.gz"]


def test_downloaded_file_with_wrong_digest_is_not_kept(server, tmp_path):
    srv, url = server
    digests = {**SAMPLE_SHA256, "val.en.gz": "0" * 64}
    real = SAMPLE_SHA256["val.en.gz"]
    with pytest.raises(ValueError, match=rf"val\.en\.gz gave a file with SHA-256 {real}, expected {'0' * 64} "
                                         rf"for val\.en\.gz; nothing was written"):
        multi30k(tmp_path, "val", download=True, base_url=url, digests=digests)
    assert _leftovers(tmp_path) == ["val.de.gz"]   # the good one stays, no temporary file


def test_present_file_with_wrong_digest_raises(server, tmp_path):
    srv, url = server
    damaged = (tmp_path / "val.de.gz")
    damaged.write_bytes(b"not the published file")
    bad = hashlib.sha256(b"not the published file").hexdigest()
    with pytest.raises(ValueError, match=rf"{re.escape(str(damaged))} has SHA-256 {bad}, expected "
                                         rf"{SAMPLE_SHA256['val.de.gz']}; .*delete it"):
        multi30k(tmp_path, "val", download=True, base_url=url, digests=SAMPLE_SHA256)
    assert damaged.read_bytes() == b"not the published file" and srv.requests == []


def test_real_digests_are_the_default(server, tmp_path):
    _, url = server
    with pytest.raises(ValueError, match=rf"expected {M30K.SHA256['val.de.gz']} for val\.de\.gz"):
        multi30k(tmp_path, "val", download=True, base_url=url)
    assert _leftovers(tmp_path) == []


def test_fixed_digest_table():
    assert set(M30K.SHA256) == {f"{s}.{lang}.gz" for s in M30K.SPLITS for lang in ("de", "en")}
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in M30K.SHA256.values())
    with pytest.raises(TypeError):
        M30K.SHA256["val.de.gz"] = "0" * 64      # read-only: no caller can change the default
    assert M30K.BASE_URL == "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"


def test_server_down_names_url_and_manual_placement(tmp_path):
    with socket.socket() as s:                    # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(OSError, match=rf"could not download {url}val\.de\.gz \(ConnectionRefusedError.*\); "
                                      rf"without a network, download {url}val\.de\.gz elsewhere and copy it to "
                                      rf"{re.escape(str(tmp_path / 'val.de.gz'))}"):
        multi30k(tmp_path, "val", download=True, base_url=url, digests=SAMPLE_SHA256)
    assert _leftovers(tmp_path) == []


def test_missing_on_server(tmp_path):
    (tmp_path / "empty").mkdir()
    with serving(tmp_path / "empty") as (_, url), pytest.raises(OSError, match=r"val\.de\.gz \(HTTP 404 File not found\)"):
        multi30k(tmp_path / "root", "val", download=True, base_url=url, digests=SAMPLE_SHA256)
    assert _leftovers(tmp_path / "root") == []


def test_cut_transfer_leaves_no_partial_file(tmp_path):
    with serving(tmp_path, _Truncating) as (srv, url):
        with pytest.raises(OSError, match=r"could not download .*val\.de\.gz \(IncompleteRead"):
            multi30k(tmp_path / "root", "val", download=True, base_url=url, digests=SAMPLE_SHA256)
        assert srv.requests == ["/val.de.gz"]
    assert _leftovers(tmp_path / "root") == []


def test_base_url_from_environment(server, tmp_path, monkeypatch):
    srv, url = server
    monkeypatch.setenv("DEEPFN_MULTI30K_URL", url)
    assert len(multi30k(tmp_path, "test_2016_flickr", download=True, digests=SAMPLE_SHA256)) == 300
    assert len(srv.requests) == 2


def test_default_root_is_the_per_user_folder(server, tmp_path, monkeypatch):
    _, url = server
    monkeypatch.setenv("DEEPFN_DATA_DIR", str(tmp_path / "data"))
    multi30k(split="val", download=True, base_url=url, digests=SAMPLE_SHA256)
    assert _leftovers(tmp_path / "data" / "multi30k") == VAL
    monkeypatch.delenv("DEEPFN_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_home("multi30k") == tmp_path / "home" / ".cache" / "deepfn" / "data" / "multi30k"
    with pytest.raises(FileNotFoundError, match=r"home/\.cache/deepfn/data/multi30k/val\.de\.gz not found"):
        multi30k(split="val")


def test_language_without_a_digest(tmp_path):
    with pytest.raises(ValueError, match=r"no SHA-256 digest is known for val\.fr\.gz; download=True fetches only"):
        multi30k(tmp_path, "val", tgt="fr", download=True, base_url="http://127.0.0.1:9/")
