import sys

from livelm.cli.main import main

sys.exit(main())
