"""User-facing errors: each names the offending file or value and says what to do."""


class SmidsError(Exception):
    """Base class for errors caused by user input (data, config, CLI values)."""


class DataError(SmidsError):
    """The image folder, a manifest or a cache file is unusable."""


class ConfigError(SmidsError):
    """A TOML config or a CLI value is invalid."""


class OutputError(SmidsError):
    """A result, model or cache file cannot be written (disk full, read-only, no permission)."""


class TrainingDiverged(SmidsError):
    """The training loss became NaN or infinite; tuning turns this into a pruned trial."""
