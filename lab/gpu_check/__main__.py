"""`python -m lab.gpu_check`, from the repository root."""

import sys

from lab.gpu_check.main import main

sys.exit(main())
