"""``python -m offload`` runs the same command as ``offload``."""

from offload.cli import main

raise SystemExit(main())
