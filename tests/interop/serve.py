"""Serves a directory over HTTP on 127.0.0.1 (an ephemeral port, written to PORTFILE).

Usage: serve.py DIR PORTFILE [--delay-objects SECONDS]
--delay-objects makes every request under /objects/ wait first (a stalled treehub).
HTTP/1.1 with keep-alive and TCP_NODELAY (without it every request waits ~40 ms on
delayed ACKs). Stops on SIGTERM.
"""

import functools
import http.server
import os
import sys
import time

DELAY = 0.0


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

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
