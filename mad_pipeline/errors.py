"""User-facing errors: one clear line, never a traceback."""


class MadError(Exception):
    """A mistake in the user's input or environment. The CLI prints ``error: <message>`` and exits 2."""

    exit_code = 2


class InputError(MadError):
    """Bad input data: names the file (and line or record) that is wrong."""


class TeacherError(MadError):
    """A teacher could not be found or loaded."""


class StoreError(MadError):
    """A feature store is missing, incomplete or corrupted."""
