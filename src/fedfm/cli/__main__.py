"""``python -m fedfm.cli``: the ``fedfm`` command line."""

import sys

from fedfm.cli import main

sys.exit(main())
