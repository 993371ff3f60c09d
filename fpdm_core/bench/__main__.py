"""`python -m fpdm_core.bench ...`"""
import sys

from .cli import main

if __name__ == "__main__":  # worker processes (ablations --jobs) import this module without running it
    sys.exit(main())
