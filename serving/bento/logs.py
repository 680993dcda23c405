"""BentoML's log of a failed API call, made to read like ours: a request it could not parse (a client's
mistake, a 4xx) becomes one WARNING line instead of an ERROR with a traceback; server faults keep
their traceback."""

from __future__ import annotations

import logging

from serving.bento.answers import describe_validation_errors

# BentoML logs every exception of an API call here ("Exception on /path [POST]" + traceback).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


class ClientErrorsAsOneLine(logging.Filter):
    """Turns BentoML's "Exception on /path" ERROR + traceback into one WARNING line when the exception
    is the client's fault (invalid input: a 4xx), and drops it for a request shed as overloaded (503:
    the admission counts those and logs one summary line per interval); server faults keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import ServiceUnavailable

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceUnavailable):
            return False
        status = client_error_status(exc)
        if status is not None:
            # BentoML's message is "Exception on %s [%s]" % (path, method): say it as our own lines do
            path, method = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
            summary = describe_validation_errors(exc.errors()) if hasattr(exc, "errors") else str(exc)
            record.msg, record.args = "%s %s: %d %s", (method, path, status, summary)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def client_error_status(exc: BaseException | None) -> int | None:
    """The 4xx status BentoML answers for `exc`, or None if it is not a client error."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return int(exc.error_code.value)
    return None


def install_log_filter() -> None:
    """Add ClientErrorsAsOneLine to BentoML's request logger, once."""
    bentoml_logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorsAsOneLine) for f in bentoml_logger.filters):
        bentoml_logger.addFilter(ClientErrorsAsOneLine())
