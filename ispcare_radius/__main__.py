"""``python -m ispcare_radius``: the same as the ``ispcare-radius`` command."""

from ispcare_radius.cli.main import main

main()
