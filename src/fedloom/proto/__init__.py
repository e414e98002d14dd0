"""Protobuf sources and the code generated from them; only `fedloom.transport` imports these.

``fleet_pb2.py``, ``fleet_pb2_grpc.py`` and ``fleet_pb2.pyi`` are generated from
``fleet.proto`` by ``python scripts/gen_proto.py``: do not edit them by hand, and
regenerate them after changing the ``.proto``. They are excluded from lint, format and
mypy. Nothing outside ``fedloom.transport`` imports this package; the byte layout of
tasks and results in ``Frame`` streams lives in ``fedloom.transport.grpc.wire``.
"""

__all__: list[str] = []
