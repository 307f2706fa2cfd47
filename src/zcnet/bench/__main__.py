"""``python -m zcnet.bench``: the ``zcnet bench`` command on its own."""

from zcnet.bench.cli import main

raise SystemExit(main())
