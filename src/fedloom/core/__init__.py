"""What every layer shares: weights, messages, the Client and Channel protocols, seeded rng."""

from fedloom.core.context import ClientContext, Partitioner
from fedloom.core.messages import (
    ClientId,
    Config,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    GetWeightsIns,
    Metrics,
    Reply,
    Scalar,
    Task,
    WeightsRes,
)
from fedloom.core.metrics import weighted_average
from fedloom.core.protocols import (
    AsyncChannel,
    Channel,
    Client,
    EvaluatingClient,
    PluginClient,
)
from fedloom.core.rng import derive_seed, derive_seeds, generator
from fedloom.core.weights import Vector, VectorSpec, Weights, WeightsLike

__all__ = [
    "AsyncChannel",
    "Channel",
    "Client",
    "ClientContext",
    "ClientId",
    "Config",
    "EvaluateIns",
    "EvaluateRes",
    "EvaluatingClient",
    "Failure",
    "FitIns",
    "FitRes",
    "GetWeightsIns",
    "Metrics",
    "Partitioner",
    "PluginClient",
    "Reply",
    "Scalar",
    "Task",
    "Vector",
    "VectorSpec",
    "Weights",
    "WeightsLike",
    "WeightsRes",
    "derive_seed",
    "derive_seeds",
    "generator",
    "weighted_average",
]
