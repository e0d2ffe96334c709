"""``python -m mad_pipeline.cli`` is the same as the ``mad`` console script."""

from mad_pipeline.cli.main import main

if __name__ == "__main__":  # not when a spawned process (a dask worker) imports the parent's main module
    main()
