#!/usr/bin/env python
"""`python scripts/predict.py --config NAME.yaml [options] [key=value ...]`; see `--help`."""

import sys

from mobilevision.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
