"""An HTTP server on 127.0.0.1 for the download tests, started and stopped by them. It serves files by route:
`/good/NAME` (HTTP Range requests answered with 206), `/corrupt/NAME` (the same length of other bytes), `/cut/NAME`
(the first answer promises the whole file and stops halfway; later ones answer Range requests), `/norange/NAME`
(always the whole file, 200), `/404/NAME` and `/500/NAME`; as the Hugging Face Hub, `/ROUTE/REPO/resolve/REVISION/NAME`
answers HEAD and GET with the headers huggingface_hub reads. It records each request's path and Range header."""
import hashlib
import http.server
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class Served:
    files: Dict[str, bytes]
    requests: List[Tuple[str, Optional[str]]] = field(default_factory=list)
    cut: Dict[str, bool] = field(default_factory=dict)  # /cut/NAME paths already cut once


class Handler(http.server.BaseHTTPRequestHandler):
    served: Served

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:  # noqa: N802 - http.server's name
        self.served.requests.append((self.path, self.headers.get("Range")))
        parts = self.path.split("/")
        route, name = parts[1], parts[-1]
        if route in ("404", "500"):
            self.send_error(int(route))
            return
        if name not in self.served.files:
            self.send_error(404)
            return
        data = self.served.files[name]
        if route == "corrupt":
            data = bytes(255 - byte for byte in data[:64]) + data[64:]
        start = 0
        header = self.headers.get("Range")
        if header and route != "norange":
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.end_headers()
        if head:
            return
        if route == "cut" and not self.served.cut.get(self.path):
            self.served.cut[self.path] = True
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)


class FileServer:
    """`with FileServer({name: bytes}) as server:` serves them at `server.url(route, name)`."""

    def __init__(self, files: Dict[str, bytes]) -> None:
        self.served = Served(dict(files))
        handler = type("BoundHandler", (Handler,), {"served": self.served})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, route: str, name: str) -> str:
        return f"{self.base}/{route}/{name}"

    @property
    def requests(self) -> List[Tuple[str, Optional[str]]]:
        return self.served.requests

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
