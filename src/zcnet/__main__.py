"""``python -m zcnet``: the same as the ``zcnet`` command."""

from zcnet.cli import main

raise SystemExit(main())
