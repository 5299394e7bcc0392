"""The errors `mdt` reports to the user as one line (exit status 2) rather than as a traceback.

Only these classes (and mdt_kernels.BackendError: a backend the user chose cannot run) count as the user's
mistake; any other exception, a ValueError from deep inside PyTorch included, is a bug and shows its
traceback. Each subclasses the built-in exception a library user would catch, so `except ValueError` and
`pytest.raises(FileNotFoundError)` keep working.
"""


class MdtError(Exception):
    """Something the user asked for or gave cannot work; the message says what and how to fix it."""


class UsageError(MdtError, ValueError):
    """An argument or setting that cannot work (unknown name, out of range, options that exclude each other)."""


class InputError(MdtError, ValueError):
    """A file or folder the user gave has the wrong contents (not a checkpoint, samples, latents, pictures...)."""


class MissingInputError(MdtError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class NotAFolderError(MdtError, NotADirectoryError):
    """A path the user gave as a folder is a file."""


class MissingPackageError(MdtError, ImportError):
    """An optional package a command needs is not installed; the message says how to install it."""


class NonFiniteError(MdtError, FloatingPointError):
    """A computation on the user's run or data gave NaN, infinity or a complex number (a diverged training
    loss: what was saved before is intact)."""
