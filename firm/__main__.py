"""`python -m firm` = the `firm` command."""

import sys

from firm.cli import main

sys.exit(main())
