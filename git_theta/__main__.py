import sys

from git_theta.cli import main

sys.exit(main())
