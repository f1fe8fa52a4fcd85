"""Loki's ``logproto`` push messages, built at test time from a hand-written descriptor.

This decodes what our hand-written encoder produces *independently* of it: the message
classes come from the ``protobuf`` runtime and a ``FileDescriptorProto`` transcribed from
``pkg/push/push.proto`` in grafana/loki (``google.protobuf.Timestamp`` is declared locally
as a wire-identical ``Timestamp {int64 seconds = 1; int32 nanos = 2;}``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["EntryAdapter", "LabelPairAdapter", "PushRequest", "StreamAdapter", "Timestamp"]

_F = descriptor_pb2.FieldDescriptorProto


def _message(
    file: descriptor_pb2.FileDescriptorProto,
    name: str,
    fields: list[tuple[str, int, int, int, str | None, str | None]],
) -> None:
    message = file.message_type.add(name=name)
    for field_name, number, field_type, label, type_name, json_name in fields:
        entry = message.field.add(name=field_name, number=number, type=field_type, label=label)
        if type_name:
            entry.type_name = type_name
        if json_name:
            entry.json_name = json_name


def _build() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/fakes/push.proto", package="logproto", syntax="proto3"
    )
    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    _message(
        file,
        "Timestamp",
        [("seconds", 1, _F.TYPE_INT64, opt, None, None), ("nanos", 2, _F.TYPE_INT32, opt, None, None)],
    )
    _message(
        file,
        "LabelPairAdapter",
        [("name", 1, _F.TYPE_STRING, opt, None, None), ("value", 2, _F.TYPE_STRING, opt, None, None)],
    )
    _message(
        file,
        "EntryAdapter",
        [
            ("timestamp", 1, _F.TYPE_MESSAGE, opt, ".logproto.Timestamp", "ts"),
            ("line", 2, _F.TYPE_STRING, opt, None, None),
            (
                "structuredMetadata",
                3,
                _F.TYPE_MESSAGE,
                rep,
                ".logproto.LabelPairAdapter",
                "structuredMetadata",
            ),
        ],
    )
    _message(
        file,
        "StreamAdapter",
        [
            ("labels", 1, _F.TYPE_STRING, opt, None, None),
            ("entries", 2, _F.TYPE_MESSAGE, rep, ".logproto.EntryAdapter", None),
            ("hash", 3, _F.TYPE_UINT64, opt, None, None),
        ],
    )
    _message(
        file,
        "PushRequest",
        [("streams", 1, _F.TYPE_MESSAGE, rep, ".logproto.StreamAdapter", None)],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"logproto.{name}"))
        for name in ("Timestamp", "LabelPairAdapter", "EntryAdapter", "StreamAdapter", "PushRequest")
    }


_CLASSES = _build()
Timestamp: Any = _CLASSES["Timestamp"]
LabelPairAdapter: Any = _CLASSES["LabelPairAdapter"]
EntryAdapter: Any = _CLASSES["EntryAdapter"]
StreamAdapter: Any = _CLASSES["StreamAdapter"]
PushRequest: Any = _CLASSES["PushRequest"]
