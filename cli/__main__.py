"""``python -m mad_pipeline.cli`` is the same as the ``mad`` console script."""

from mad_pipeline.cli.main import main

main()
