"""Errors that are the user's to fix (bad data, config, sharding plan or run directory).

Every such error derives from :class:`UserError`; the scripts print its message alone and exit
with status 1 (:func:`jaxrec.train.cli.run`), while any other exception is a bug and keeps its
traceback. The classes also derive from the builtin a caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` code keeps working.

This module imports nothing from jaxrec, so every layer may raise these.
"""

from __future__ import annotations


class UserError(Exception):
  """Base of the errors a user fixes by changing their data, config, flags or run directory."""


class ConfigError(UserError, ValueError):
  """A config field (or a combination of them) that cannot be run."""


class ConfigMismatchError(ConfigError):
  """Resuming a run directory with a config that changes the run's trajectory."""


class RunDirError(UserError, FileNotFoundError):
  """A run directory (or its checkpoint) that is missing or does not fit the request."""
