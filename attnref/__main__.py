"""``python -m attnref``: the ``attnref`` command line (:mod:`attnref.cli`)."""
import sys

from .cli import main

sys.exit(main())
