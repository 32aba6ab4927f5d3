"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class SaesteerError(Exception):
    """Bad input from the user: the message names the problem and how to fix it."""


def require(condition: bool, message: str) -> None:
    """Raise `SaesteerError(message)` unless `condition` holds."""
    if not condition:
        raise SaesteerError(message)


def at_least(low: float, **values: float | None) -> None:
    """Each given number (None = unset, allowed) is at least `low`; the message names the first
    that is not: `at_least(1, batch_size=0)` → "batch_size must be at least 1, got 0"."""
    for name, value in values.items():
        if value is not None and not value >= low:  # also refuses NaN
            raise SaesteerError(f"{name} must be at least {low:g}, got {value}")
