"""The exceptions the CLI turns into a one-line message and exit code 2."""


class UserError(Exception):
    """A problem the user can fix: bad usage, config or data. Exit code 2."""


class ConfigError(UserError):
    """The config file is missing, unreadable or invalid."""


class DataError(UserError):
    """The data file is missing, unreadable or does not match the config."""


class Busy(UserError):
    """Another copy of the same audit job holds its lock. Exit code 75 (try again later)."""


class Interrupted(BaseException):
    """SIGTERM received; raised like KeyboardInterrupt so runs end as KILLED."""
