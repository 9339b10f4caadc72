"""`python -m tsubasa_fast.cli` = the `tsubasa-fast` console script (e.g. under torchrun)."""

import sys

from . import main

sys.exit(main())
