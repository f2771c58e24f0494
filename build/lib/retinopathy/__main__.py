"""``python -m retinopathy <command>``: the same as the ``retinopathy`` command."""

from .commands import main

main()
