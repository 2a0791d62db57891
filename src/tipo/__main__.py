"""``python -m tipo`` (and ``torchrun -m tipo train``): the ``tipo`` command."""

import sys

from .cli import main

sys.exit(main())
