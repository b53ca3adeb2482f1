import sys

from mgd_rt.cli import main

sys.exit(main())
