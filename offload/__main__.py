"""``python -m offload`` runs the same command as ``offload``."""

from offload.cli import main

if __name__ == "__main__":  # not when a --workers process is spawned from this module
    raise SystemExit(main())
