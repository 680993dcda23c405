"""The one error type for mistakes a user can fix, and the CLI edge that reports them.

A `UserError` (missing or corrupt file, bad setting, unusable input) becomes one log line and
exit code 2 at the CLI edge; every other exception keeps its traceback, because it is a bug.
Torch-free: the export registry and the CLIs import it without pulling in torch.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# OS failures the user fixes outside the program (free space, permissions), not bugs.
USER_FIXABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


class UserError(Exception):
    """Something the user can fix; the message says what and how, without a traceback."""


class ConfigError(UserError, ValueError):
    """A setting is invalid or contradicts another one (or the checkpoint being resumed)."""


def setup_cli_logging(log_file: str | Path | None = None) -> None:
    """INFO lines with time and origin for every CLI, to stderr (and to `log_file`, rewritten, if given)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers)


def run_cli(body: Callable[[], int]) -> int:
    """Run a CLI body; a UserError (or a full disk, a permission problem) is one log line and exit 2."""
    try:
        return body()
    except UserError as e:
        log.error("%s", e)
        return 2
    except OSError as e:
        if e.errno not in USER_FIXABLE_ERRNOS:
            raise
        log.error("%s", e)
        return 2
