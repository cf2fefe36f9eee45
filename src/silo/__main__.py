import sys

from silo.cli import main

sys.exit(main())
