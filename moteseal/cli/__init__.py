"""The ``moteseal`` command line: ``main`` assembles the subcommands that
the modules beside it define (CPython only)."""
