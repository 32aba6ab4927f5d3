"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class SaesteerError(Exception):
    """Bad input from the user: the message names the problem and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise `SaesteerError(message)` unless `condition` holds."""
    if not condition:
        raise SaesteerError(message)
