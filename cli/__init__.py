"""The ``mad`` command line (Typer). Thin: parse arguments, call one stage, print. No logic here."""
