"""``python -m tasks.train_cli``: the training command (``tasks.train.cli``) under the name recipes and launches use."""

import sys

from tasks.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
