"""`python -m fpdm_core.bench ...`"""
import sys

from .cli import main

sys.exit(main())
