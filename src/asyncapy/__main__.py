"""``python -m asyncapy``: the ``asyncapy`` command."""

import sys

from .cli import main

sys.exit(main())
