"""A local HTTP server (127.0.0.1, a free port, in a thread) for testing downloads offline."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files of its folder; records each requested path in ``server.requests``."""

    def log_message(self, *args):   # keep pytest's output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@contextlib.contextmanager
def serving(directory: str | Path, handler: type = QuietHandler) -> Iterator[tuple[http.server.HTTPServer, str]]:
    """``(server, base_url)`` while the block runs; ``base_url`` ends with ``/``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
