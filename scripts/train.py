#!/usr/bin/env python
"""`python scripts/train.py --config NAME.yaml [options] [key=value ...]`; see `--help`."""

import sys

from mobilevision.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
