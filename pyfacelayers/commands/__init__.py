"""Subcommands of the ``pyfacelayers`` command line (one module each)."""
