"""`python -m omnilive_cli ...` is `omnilive ...`."""

import sys

from omnilive_cli.main import main

sys.exit(main())
