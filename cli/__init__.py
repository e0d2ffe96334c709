"""The ``mad`` command line (Typer). Thin: parse arguments, call one stage, print. No logic here.

:mod:`.app` holds the Typer apps, each command module attaches its commands to them, and :mod:`.main` (the console
script) imports every command module and runs the app.
"""
