"""``python -m oomkiller_bench``: the benchmark, run from a checkout."""
import sys

from . import main

sys.exit(main(sys.argv[1:]))
