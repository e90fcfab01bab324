"""``python -m edgenas`` is the ``edgenas`` command (torchrun can launch it with ``-m``)."""

from edgenas.cli import main

main()
