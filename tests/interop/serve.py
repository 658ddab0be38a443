"""Serves a directory over HTTP on 127.0.0.1 (an ephemeral port, written to PORTFILE).

Usage: serve.py DIR PORTFILE [--delay-objects SECONDS]
--delay-objects makes every request under /objects/ wait first (a stalled treehub).
A path segment that decodes to a name containing '/' (a role name such as "ci/nightly builds",
requested as "1.ci%2Fnightly%20builds.json") names one file, stored under
urllib.parse.quote(name, safe="") the way TUF clients name role files; every other path is
served as SimpleHTTPRequestHandler does.
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
        raw = path.split("?", 1)[0].split("#", 1)[0]
        names = [urllib.parse.unquote(s) for s in raw.split("/") if s]
        if not any("/" in n for n in names):
            return super().translate_path(path)
        if any(n in (".", "..") for n in names):
            return os.path.join(self.directory, ".refused")
        return os.path.join(self.directory, *(urllib.parse.quote(n, safe="") for n in names))

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
