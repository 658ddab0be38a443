"""Refreshes a repository with python-tuf's ngclient and downloads targets.

Usage: ngclient.py TRUSTED_ROOT METADATA_DIR METADATA_URL TARGET_URL TARGET_DIR [TARGET ...]
Prints, for each target, "<target path> <local file>"; exits 1 (with the error) on failure.
"""

import os
import shutil
import sys

from tuf.ngclient import Updater


def main() -> int:
    trusted_root, metadata_dir, metadata_url, target_url, target_dir, *targets = sys.argv[1:]
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    if not os.path.exists(os.path.join(metadata_dir, "root.json")):
        shutil.copyfile(trusted_root, os.path.join(metadata_dir, "root.json"))
    try:
        # bootstrap=None: trust the root.json already in metadata_dir (tuf >= 6 asks explicitly).
        updater = Updater(
            metadata_dir,
            metadata_url.rstrip("/") + "/",
            target_dir,
            target_url.rstrip("/") + "/",
            bootstrap=None,
        )
        updater.refresh()
        for name in targets:
            info = updater.get_targetinfo(name)
            if info is None:
                raise RuntimeError(f"target {name} not found")
            path = updater.find_cached_target(info) or updater.download_target(info)
            print(name, path)
    except Exception as e:  # noqa: BLE001 - report any failure as exit 1
        print(f"ngclient: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
