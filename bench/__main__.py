"""``python -m bench``: run the static benchmark and print its table."""

from bench.run import main

raise SystemExit(main())
