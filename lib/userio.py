"""What the user gives and what the software writes: the one error type a bad input raises, the
exceptions a damaged file raises when read, and file writes that are never seen half-done."""
import os
import pickle
import zipfile


class UserError(Exception):
    """A bad input from the user (a flag, a file, a checkpoint): the command-line tools print its
    message as one line. Anything else that goes wrong is a bug and keeps its traceback."""


# What torch.load and load_state_dict raise for a truncated, foreign or mismatched file: not
# a bug of ours, so readers turn these into a UserError that names the file.
DAMAGED = (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile)


def atomic_write(path, data: bytes):
    """Write to a temporary file beside `path`, then rename: readers see the old or the new file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
