"""Errors with a message meant for the user (the CLI prints them and exits non-zero); no heavy imports."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model it was given for."""


class StoreError(RuntimeError):
    """The results store cannot be opened or written."""


class DatasetMissingError(FileNotFoundError):
    """The data of a dataset is not on disk; tasks needing it are skipped with this reason."""


class CellNotApplicable(Exception):
    """The task cannot apply to this model in this run (e.g. no paired model); recorded as skipped."""


class OutputError(RuntimeError):
    """A report or plot file cannot be written (a directory in its place, a full disk); the results are safe in
    the store, so the message says how to write the report again."""
