import sys

from geomexpl.cli import main

sys.exit(main())
