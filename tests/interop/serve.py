"""Serves a directory over HTTP on 127.0.0.1 (an ephemeral port, written to PORTFILE).

Usage: serve.py DIR PORTFILE [--delay-objects SECONDS]
--delay-objects makes every request under /objects/ wait first (a stalled treehub).
A file stored under the percent-encoded form of each name in the request path
(urllib.parse.quote(name, safe=""), the way TUF clients name role files: the role
"ci/nightly builds" is requested as and stored as "1.ci%2Fnightly%20builds.json") is served
first; otherwise paths are served as SimpleHTTPRequestHandler does.
HTTP/1.1 with keep-alive and TCP_NODELAY (without it every request waits ~40 ms on
delayed ACKs). Stops on SIGTERM.
"""

import functools
import http.server
import os
import sys
import time
import urllib.parse

DELAY = 0.0


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

    def do_GET(self):  # noqa: N802
        if DELAY and "/objects/" in self.path:
            time.sleep(DELAY)
        super().do_GET()


def main() -> None:
    global DELAY
    directory, portfile = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 4 and sys.argv[3] == "--delay-objects":
        DELAY = float(sys.argv[4])
    handler = functools.partial(Handler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, portfile)
    server.serve_forever()


if __name__ == "__main__":
    main()
