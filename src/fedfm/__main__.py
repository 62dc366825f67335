"""``python -m fedfm``: the ``fedfm`` command line."""

import sys

from fedfm.cli import main

sys.exit(main())
