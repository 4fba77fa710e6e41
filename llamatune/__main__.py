import sys

from llamatune.cli import main

sys.exit(main())
