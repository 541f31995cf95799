#!/usr/bin/env python
"""`python scripts/export.py --config NAME.yaml [options] [key=value ...]`; see `--help`."""

import sys

from mobilevision.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
