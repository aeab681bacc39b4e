"""What the ``xraydiff`` command runs, importable by the command and by the studies alike.

``cli.py`` parses the command line and dispatches here; ``experiments/`` drive the same functions.
Dependencies: cli -> experiments -> commands -> lightning_modules / datamodules / callbacks -> xraydiff.
"""
