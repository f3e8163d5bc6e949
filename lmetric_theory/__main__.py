import sys

from lmetric_theory.cli import main

sys.exit(main())
