"""The one exception type a user sees: a problem with their input, stated with the fix, shown without a traceback."""


class DdpmkitError(Exception):
    """Bad input or missing resources. The command line prints ``error: <message>`` and exits with status 2."""


class ConfigError(DdpmkitError):
    """A configuration key or value that is not allowed; the message names the key and what is allowed."""
