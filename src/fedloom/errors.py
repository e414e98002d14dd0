"""The exceptions fedloom raises, each saying what was wrong, what came, and how to fix it.

::

    FedloomError
    ├── ConfigError (ValueError)      a parameter, TOML key or combination is invalid
    │   └── DatasetNotFound           a dataset's files are not where the loader looked
    ├── ProtocolError                 a peer broke the message contract
    │   ├── DecodeError               bytes that do not parse as the expected message
    │   ├── ReplayedMessage           a message bound to another run, round or client
    │   ├── QuotaExceeded             a peer sent more, or joined more often, than allowed
    │   └── InvalidResult             a result that does not match the global model
    │       └── ShapeMismatch         a tensor with the wrong name, shape or dtype
    ├── TransportError                the channel to a peer failed
    │   ├── ConnectError
    │   └── DeadlineExceeded
    ├── ClientError                   user client code raised during a task
    │   └── EntryPointError           a compute package's entry point failed
    ├── PackageError                  a compute package is malformed, unsafe or untrusted
    ├── AggregationError              results could not be combined
    │   └── NotEnoughResults
    ├── PrivacyError
    │   ├── BudgetExhausted
    │   └── SecAggAborted             secure aggregation stopped before revealing anything
    │       ├── StageOrderError       a stage message out of order, repeated, or of another round
    │       └── StageTimeout          a stage did not come within its deadline
    └── StoreError                    the run store cannot be used
        ├── StoreUnreachable          its database cannot be reached
        └── CorruptState              a recorded file or row fails its checksum

Every exception carries structured attributes as well as its text, so callers
can react without parsing messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "AggregationError",
    "BudgetExhausted",
    "ClientError",
    "ConfigError",
    "ConnectError",
    "CorruptState",
    "DeadlineExceeded",
    "DatasetNotFound",
    "DecodeError",
    "EntryPointError",
    "FedloomError",
    "InvalidResult",
    "NotEnoughResults",
    "PackageError",
    "PrivacyError",
    "ProtocolError",
    "QuotaExceeded",
    "ReplayedMessage",
    "SecAggAborted",
    "ShapeMismatch",
    "StageOrderError",
    "StageTimeout",
    "StoreError",
    "StoreUnreachable",
    "TransportError",
    "did_you_mean",
]


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return `` Did you mean 'x'?`` for the closest option, or an empty string."""
    matches = difflib.get_close_matches(value, list(options), n=1)
    return f" Did you mean '{matches[0]}'?" if matches else ""


class FedloomError(Exception):
    """Base of every error fedloom raises on purpose."""


class ConfigError(FedloomError, ValueError):
    """A configuration value, key or combination is invalid.

    Attributes:
        field: the parameter or TOML path as the user wrote it, when known.
        value: the value received, when known.
    """

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class DatasetNotFound(ConfigError):
    """A dataset loader found no files where it looked; the text says how to get them.

    Attributes:
        path: where the loader looked (a path, or several joined by commas), when known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message, field="root", value=path)
        self.path = path


class ProtocolError(FedloomError):
    """A peer sent something that breaks the message contract."""

    def __init__(self, message: str, *, client_id: str | None = None) -> None:
        super().__init__(message)
        self.client_id = client_id


class DecodeError(ProtocolError):
    """Bytes that do not decode as the expected message."""


class ReplayedMessage(ProtocolError):
    """A result that does not answer the task it names for this run, round and caller.

    A copy of an earlier result, one sent for another client, or one from another run
    (a replay) is refused: the sender's task fails and the round goes on.
    """


class QuotaExceeded(ProtocolError):
    """A peer went over a configured quota (bytes uploaded, joins per window).

    Attributes:
        retry_after_s: how long until the quota allows the request again, when known.
    """

    def __init__(
        self, message: str, *, client_id: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, client_id=client_id)
        self.retry_after_s = retry_after_s


class InvalidResult(ProtocolError):
    """A client result that cannot be used (non-finite values, wrong count, bad type)."""

    def __init__(
        self, message: str, *, client_id: str | None = None, tensor: str | None = None
    ) -> None:
        super().__init__(message, client_id=client_id)
        self.tensor = tensor


class ShapeMismatch(InvalidResult):
    """A tensor whose name, shape or dtype differs from the global model's."""


class TransportError(FedloomError):
    """The channel to a peer failed."""


class ConnectError(TransportError):
    """A peer could not be reached."""


class DeadlineExceeded(TransportError):
    """A task did not finish before its deadline."""


class ClientError(FedloomError):
    """User client code raised while running a task; the original is the ``__cause__``."""

    def __init__(self, message: str, *, client_id: str | None = None) -> None:
        super().__init__(message)
        self.client_id = client_id


class EntryPointError(ClientError):
    """A compute package's entry point exited non-zero, was killed, or timed out.

    Attributes:
        entry_point: "train", "validate", "startup" or "init".
        returncode: the exit status; negative for a signal; None after a timeout.
        output_tail: the last lines the command printed.
    """

    def __init__(
        self,
        message: str,
        *,
        entry_point: str,
        returncode: int | None,
        output_tail: str,
        client_id: str | None = None,
    ) -> None:
        super().__init__(message, client_id=client_id)
        self.entry_point = entry_point
        self.returncode = returncode
        self.output_tail = output_tail


class PackageError(FedloomError):
    """A compute package is malformed, unsafe (paths, links, size) or untrusted (digest, signer)."""


class AggregationError(FedloomError):
    """Results could not be combined into an update."""


class NotEnoughResults(AggregationError):
    """Fewer results arrived than a round or aggregator needs.

    Attributes:
        received: how many usable results arrived.
        required: how many were needed.
    """

    def __init__(self, *, received: int, required: int, detail: str = "") -> None:
        message = (
            f"a round needs at least {required} result{'s' if required != 1 else ''}, "
            f"got {received}."
            f"{' ' + detail if detail else ''} Lower min_fit, sample more clients, "
            "or fix the failing clients."
        )
        super().__init__(message)
        self.received = received
        self.required = required


class PrivacyError(FedloomError):
    """A privacy mechanism could not be applied as configured."""


class BudgetExhausted(PrivacyError):
    """The privacy budget would be exceeded by another round."""


class StoreError(FedloomError):
    """The run store (SQLite file or database server) cannot be used as asked."""


class StoreUnreachable(StoreError):
    """The store's database cannot be reached or opened; the message shows the URL, password masked.

    Attributes:
        url: the URL with its password replaced by ``***``.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class CorruptState(StoreError):
    """A recorded checkpoint, state file or database fails its checks; nothing was loaded.

    Attributes:
        path: the file that failed, when a file did.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SecAggAborted(PrivacyError):
    """Secure aggregation stopped a round rather than reveal more than the sum.

    Raised by the server when too few shares came back to unmask, and by an honest
    client when the server's request is inconsistent (a peer marked both dropped and
    alive, too few survivors, keys of someone who is not a neighbour).

    Attributes:
        stage: the protocol stage ("setup", "share_keys", "masked_input", "unmask").
        client_id: the client concerned, when known.
    """

    def __init__(self, message: str, *, stage: str, client_id: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.client_id = client_id


class StageOrderError(SecAggAborted):
    """A secure-aggregation message came out of order, twice, or for another round."""


class StageTimeout(SecAggAborted):
    """A secure-aggregation stage did not come within its deadline."""
