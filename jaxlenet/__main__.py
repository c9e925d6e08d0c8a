import sys

from jaxlenet.cli import main

sys.exit(main())
