"""`python -m bridgeseg.cli`: the same as the `bridgeseg` command."""

import sys

from bridgeseg.cli import main

sys.exit(main())
