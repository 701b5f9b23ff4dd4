"""The project's error types.

Every error a user can cause derives from :class:`WorkbenchError`; its message
says what was given and what is allowed. The UI turns a ``WorkbenchError`` into
a message in the page; anything else is a bug, logged with its traceback.
"""


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""


class InputError(WorkbenchError):
    """A request field is out of range or of the wrong kind.

    ``field`` names the field as the message does (``"width"``, ``"guidance scale"``), so a page can
    show the message beside the widget that caused it.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # crosses to and from the worker process with its field
        return _input_error, (str(self), self.field)


def _input_error(message: str, field: str | None) -> InputError:
    return InputError(message, field=field)


class ModelLoadError(WorkbenchError):
    """A model could not be found, was refused, or failed to load."""


class DataError(WorkbenchError):
    """A data set is empty, unreadable or too small."""


class StorageError(WorkbenchError):
    """The disk refused a write (it is full): what was being written is not there, and nothing written before
    was touched (files are written whole or not at all)."""


class Cancelled(WorkbenchError):
    """A run was stopped through its cancel token."""


class JobRunningError(WorkbenchError):
    """A second job was started while one holds the device."""
