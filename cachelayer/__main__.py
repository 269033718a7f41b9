"""`python -m cachelayer` runs the command-line interface."""

import sys

from cachelayer.cli.main import main

sys.exit(main())
