"""``python -m moonshard``: the same as the ``moonshard`` command."""

from moonshard.cli import main

main()
