"""The one exception type for bad user input (torch-free, so the runtime can raise it too)."""


class OnedetError(Exception):
    """Bad input or a failed precondition, with a message that names the file and what is wrong.

    The CLI prints it as one line without a traceback (set ONEDET_DEBUG=1 to see the traceback).
    """
