import sys

from .cli import main

if __name__ == "__main__":   # a spawned worker (sknet parity --isolate) imports this module too
    sys.exit(main())
