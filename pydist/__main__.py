"""`python -m pydist`: the `pydist` command (see pydist.cli), the same program."""

import sys

from pydist.cli import main

sys.exit(main())
