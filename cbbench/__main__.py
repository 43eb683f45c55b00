import sys

from cbbench.cli import main

sys.exit(main())
