"""``python -m thinkaloud``: the ``thinkaloud`` command (also under ``accelerate launch -m`` and ``torchrun -m``)."""

import sys

from thinkaloud.cli import main

if __name__ == "__main__":
    sys.exit(main())
