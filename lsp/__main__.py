"""`python -m lsp` = `diffill lsp`."""

import sys

from lsp.server import main

sys.exit(main())
