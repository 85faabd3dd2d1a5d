# PYTHON_ARGCOMPLETE_OK
"""``python -m netcall``: the ``netcall`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
