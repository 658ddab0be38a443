"""Serves a directory over HTTP on 127.0.0.1 (an ephemeral port, written to PORTFILE).

Usage: serve.py DIR PORTFILE [--delay-objects SECONDS] [--require-header NAME:VALUE]
                 [--tls CERT KEY CLIENT_CA]
--delay-objects makes every request under /objects/ wait first (a slow or stalled treehub).
--require-header answers 403 to any request without that header (extra-headers tests).
--tls serves HTTPS with CERT/KEY and requires a client certificate issued by CLIENT_CA.
A file stored under the percent-encoded form of each name in the request path
(urllib.parse.quote(name, safe=""), the way TUF clients name role files: the role
"ci/nightly builds" is requested as and stored as "1.ci%2Fnightly%20builds.json") is served
first; otherwise paths are served as SimpleHTTPRequestHandler does.
HTTP/1.1 with keep-alive and TCP_NODELAY (without it every request waits ~40 ms on
delayed ACKs). Stops on SIGTERM.
"""

import argparse
import functools
import http.server
import os
import ssl
import sys
import time
import urllib.parse

DELAY = 0.0
REQUIRED_HEADER = None


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def translate_path(self, path):
        # Percent-encoded names first (a role "ci/nightly builds" is requested as
        # "1.ci%2Fnightly%20builds.json" and stored under that name), then the plain way.
        raw = path.split("?", 1)[0].split("#", 1)[0]
        names = [urllib.parse.unquote(s) for s in raw.split("/") if s]
        if names and not any(n in (".", "..") for n in names):
            quoted = os.path.join(self.directory, *(urllib.parse.quote(n, safe="") for n in names))
            if os.path.isfile(quoted):
                return quoted
        return super().translate_path(path)

    def _allowed(self) -> bool:
        if REQUIRED_HEADER is None:
            return True
        name, value = REQUIRED_HEADER
        if self.headers.get(name) == value:
            return True
        self.send_error(403, f"header {name} missing or wrong")
        return False

    def do_GET(self):  # noqa: N802
        if not self._allowed():
            return
        if DELAY and "/objects/" in self.path:
            time.sleep(DELAY)
        super().do_GET()

    def do_HEAD(self):  # noqa: N802
        if self._allowed():
            super().do_HEAD()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hangs up (a killed or cancelled pull) is not an error here.
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            return
        super().handle_error(request, client_address)


def main() -> None:
    global DELAY, REQUIRED_HEADER
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("portfile")
    parser.add_argument("--delay-objects", type=float, default=0.0)
    parser.add_argument("--require-header")
    parser.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CLIENT_CA"))
    args = parser.parse_args()
    directory, portfile = args.directory, args.portfile
    DELAY = args.delay_objects
    if args.require_header:
        name, value = args.require_header.split(":", 1)
        REQUIRED_HEADER = (name.strip(), value.strip())
    handler = functools.partial(Handler, directory=directory)
    server = Server(("127.0.0.1", 0), handler)
    if args.tls:
        cert, key, client_ca = args.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, portfile)
    server.serve_forever()


if __name__ == "__main__":
    main()
