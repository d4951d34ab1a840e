"""``python -m ferryman.sandbox SYSTEM [options]``: the same as ``ferryman sandbox``."""

import sys

from ferryman.sandbox.cli import main

sys.exit(main())
