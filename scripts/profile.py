#!/usr/bin/env python
"""`python scripts/profile.py --config NAME.yaml [options] [key=value ...]`; see `--help`."""

import sys

from mobilevision.cli import main

if __name__ == "__main__":
    sys.exit(main(["profile", *sys.argv[1:]]))
