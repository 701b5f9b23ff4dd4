"""The project's error types.

Every error a user can cause derives from :class:`WorkbenchError`; its message
says what was given and what is allowed. The UI turns a ``WorkbenchError`` into
a message in the page; anything else is a bug, logged with its traceback.
"""


class WorkbenchError(Exception):
    """Base of every error the workbench raises on purpose."""


class InputError(WorkbenchError):
    """A request field is out of range or of the wrong kind."""


class ModelLoadError(WorkbenchError):
    """A model could not be found, was refused, or failed to load."""


class DataError(WorkbenchError):
    """A data set is empty, unreadable or too small."""


class Cancelled(WorkbenchError):
    """A run was stopped through its cancel token."""


class JobRunningError(WorkbenchError):
    """A second job was started while one holds the device."""
