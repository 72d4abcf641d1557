"""``python -m bench``: run the benchmark and print its tables (``--help`` for the options)."""

from bench.run import main

raise SystemExit(main())
